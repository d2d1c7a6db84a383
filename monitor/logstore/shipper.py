"""A lossless log shipper in the spirit of Filebeat: tails the node's JSON-lines session logs
and sends them to the log store (Elasticsearch/OpenSearch) with ``_bulk``.

Guarantees and how they are kept:

* **No loss.** The offset of a file advances (in ``checkpoints.json``) only after every line
  up to it was acknowledged by the log store — indexed, already present, or written to the
  dead-letter file (fsynced) with its reason. A crash (even SIGKILL) re-sends at most the
  unacknowledged batch.
* **No duplicates.** Every document has an id from the record itself: ``request_id`` for a
  session turn, ``feedback_id`` for feedback; the bulk action is ``create`` (data streams
  allow nothing else), so a re-sent line answers 409 "already exists", which counts as done.
  A batch that may have reached the store before (the first batch of each file after a
  start, a resend after a broken connection) is first checked with an ``ids`` query over
  ``seekwatch-*``, so a rollover in between cannot turn the re-send into a second copy.
* **Rotation.** Files are identified by device + inode, with a fingerprint of their first
  line against inode reuse. A file renamed by rotation keeps its offset (the shipper also
  keeps the open descriptor and drains it to EOF); a truncated file (copytruncate) restarts
  at 0. Inputs: ``*.jsonl`` and numbered rotations ``*.jsonl.N`` under the log directory.
* **Partial last line.** Bytes after the last newline are never sent: they wait until the
  writer completes the line. A file that vanishes (rotated away, deleted) stays open and is
  read while its writer may still append through its own descriptor; once its handle has not
  changed for ``torn_after`` seconds (or a ``once`` run ends), bytes still lacking a newline
  go to the dead-letter file as "incomplete last line"; if the file
  stays but has not changed for ``torn_after`` seconds while a newer file in its directory
  has (a writer killed mid-line that started a new file), as "torn last line".
* **Store down.** Connection errors, 429 and 5xx wait with exponential backoff (capped)
  and resume; per-item 429/5xx in a bulk response are retried alone.
* **Malformed lines** (invalid JSON, not an object, no id, or refused by the store with a
  4xx such as a mapping error) go to ``dead-letter.ndjson`` with the reason and are counted;
  they never block the lines after them.

The parts, one concept each: :mod:`contracts.logtail` finds and follows the files (the same
tailer the dashboard and the node's billing use), :mod:`monitor.logstore.checkpoints` keeps
offsets (atomically) and the state-directory lock, :mod:`monitor.logstore.bulk` sends a batch
and returns a result, :mod:`monitor.logstore.dead_letters` builds and writes dead letters.
This module decides what a line becomes, batches, and moves offsets.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from contracts.log_schema import FEEDBACK_DATASET
from contracts.logstore import FEEDBACK_STREAM, SESSION_STREAM, StoreClient
from contracts.logtail import WRITER_DONE_S, LogTailer, RawLine, TailedFile
from monitor.logstore.bulk import BulkSender, Doc, SendResult
from monitor.logstore.checkpoints import CheckpointStore
from monitor.logstore.dead_letters import DEAD_LETTER_FILE, DeadLetterWriter, dead_letter
from monitor.logstore.ship_errors import ShipperError

__all__ = ["Shipper", "ShipperError", "ShipStats"]

log = logging.getLogger("seekwatch.ship")


@dataclass
class ShipStats:
    shipped: int = 0        # newly indexed documents
    duplicates: int = 0     # already present (409): re-sent after a crash or a retry
    dead_lettered: int = 0  # malformed or refused lines, with reasons in the dead-letter file
    retries: int = 0        # bulk requests or items sent again
    outages: int = 0        # times the store became unreachable
    batches: int = 0
    blank_lines: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def add(self, r: SendResult) -> None:
        self.shipped += r.shipped
        self.duplicates += r.duplicates
        self.retries += r.retries
        self.outages += r.outages


def prepare(line: RawLine, path: str) -> Doc | dict:
    """What a line becomes: a document to send, or a dead-letter entry."""
    raw = line.raw

    def dead(reason: str) -> dict:
        return dead_letter(path, line.offset, reason, raw)

    try:
        rec = json.loads(raw)
    except ValueError as exc:
        return dead(f"invalid JSON: {exc}")
    if not isinstance(rec, dict):
        return dead(f"not a JSON object: {type(rec).__name__}")
    event = rec.get("event")
    dataset = event.get("dataset") if isinstance(event, dict) else None
    if dataset == FEEDBACK_DATASET:
        doc_id, index, id_field = rec.get("feedback_id"), FEEDBACK_STREAM, "feedback_id"
    else:
        doc_id, index, id_field = rec.get("request_id"), SESSION_STREAM, "request_id"
    if not isinstance(doc_id, str) or not doc_id or len(doc_id) > 512:
        return dead(f"no usable {id_field} (the document id)")
    return Doc(line, path, doc_id, index)


class Shipper:
    def __init__(
        self,
        logs_dir: str | Path,
        client: StoreClient,
        *,
        state_dir: str | Path | None = None,
        batch_docs: int = 1000,
        batch_bytes: int = 5 * 1024 * 1024,
        poll_interval: float = 0.5,
        max_backoff: float = 30.0,
        stop_event: threading.Event | None = None,
        on_batch: Callable[["Shipper"], None] | None = None,
        torn_after: float = WRITER_DONE_S,
    ) -> None:
        self.logs_dir = Path(logs_dir).resolve()
        self.state_dir = Path(state_dir).resolve() if state_dir else self.logs_dir / ".seekwatch-ship"
        self.client = client
        self.batch_docs = max(1, int(batch_docs))
        self.batch_bytes = max(1024, int(batch_bytes))
        self.poll_interval = poll_interval
        self.stop_event = stop_event or threading.Event()
        self.on_batch = on_batch
        self.torn_after = torn_after
        self.stats = ShipStats()
        self.tailer = LogTailer(self.logs_dir, exclude=[self.state_dir])
        self.checkpoints = CheckpointStore(self.state_dir)
        self.dead_letters = DeadLetterWriter(self.state_dir / DEAD_LETTER_FILE)
        self.sender = BulkSender(client, stop_event=self.stop_event, max_backoff=max_backoff)
        self._verified: set[str] = set()  # files whose first batch since start was sent

    @property
    def files(self) -> dict[str, TailedFile]:
        return self.tailer.files

    @property
    def checkpoint_path(self) -> Path:
        return self.checkpoints.path

    @property
    def dead_letter_path(self) -> Path:
        return self.dead_letters.path

    def _save_checkpoints(self) -> None:
        self.checkpoints.save(self.tailer.snapshot())

    def _dead_letter(self, entries: list[dict]) -> None:
        self.stats.dead_lettered += self.dead_letters.write(entries)

    # -- one file ---------------------------------------------------------------------------
    def _ship_file(self, f: TailedFile) -> int:
        """Ship the complete lines of one file. Returns lines consumed."""
        consumed = 0
        batch: list[Doc] = []
        batch_size = 0
        pending_dead: list[dict] = []
        last_offset = f.offset

        def flush() -> bool:
            nonlocal batch, batch_size, pending_dead
            refused: list[dict] = []
            if batch:
                # the first batch of a file after a start may repeat what a crashed run sent
                result = self.sender.send(batch, ambiguous=f.key not in self._verified)
                self.stats.add(result)
                if not result.completed:
                    return False
                self._verified.add(f.key)
                refused = result.refused
            self._dead_letter(sorted(pending_dead + refused, key=lambda e: e["offset"]))
            f.offset = last_offset
            self._save_checkpoints()
            self.stats.batches += 1
            batch, batch_size, pending_dead = [], 0, []
            if self.on_batch:
                self.on_batch(self)
            return True

        for ln in self.tailer.lines(f):
            if ln.raw.endswith(b"\r"):
                ln = RawLine(ln.file_key, ln.end_offset, ln.raw.rstrip(b"\r"))
            consumed += 1
            last_offset = ln.end_offset
            if not ln.raw.strip():
                self.stats.blank_lines += 1
            else:
                doc = prepare(ln, f.path)
                if isinstance(doc, Doc):
                    batch.append(doc)
                    batch_size += len(doc.line.raw) + len(doc.action) + 2
                else:
                    pending_dead.append(doc)
            if len(batch) >= self.batch_docs or batch_size >= self.batch_bytes or len(pending_dead) >= self.batch_docs:
                if not flush():
                    return consumed
            if self.stop_event.is_set():
                break
        if batch or pending_dead or last_offset != f.offset:
            flush()
        return consumed

    # -- files that went away or stopped mid-line ------------------------------------------------
    def _retire_vanished(self, *, final: bool = False) -> None:
        """Files no longer under the log dir (renamed to a name we do not match, or deleted
        while open): ship what their open handle holds, and forget them once their writer is
        done with them.

        A writer keeps appending through its own descriptor after a rename until it reopens
        its path (logrotate's ``postrotate``, Python's ``WatchedFileHandler``), and a buffered
        writer flushes in blocks that end mid-line, so a rotated-away file that stops mid-line
        or at a line end is usually just not finished yet. It stays open and is read again at
        every pass until its handle has not changed for ``torn_after`` seconds; only then do
        bytes after its last newline go to the dead-letter file. ``final`` (the end of a
        ``--once`` run, after which nobody could read the handle) settles them now."""
        gone = self.tailer.vanished()
        now = time.time()
        retired = False
        for f in gone:
            if f.fh is not None:
                self._ship_file(f)
                if not self.tailer.writer_done(f, 0 if final else self.torn_after, now):
                    continue  # its writer may still be appending through its own descriptor
                f.fh.seek(f.offset)
                rest = f.fh.read()
                if b"\n" in rest:
                    continue  # whole lines not acknowledged yet (store down, stopping): next pass
                if rest:
                    self._dead_letter([dead_letter(
                        f.path, f.offset, "incomplete last line (no newline) in a file that was rotated away", rest)])
            self.tailer.forget(f)
            self._verified.discard(f.key)
            retired = True
        if retired:
            self._save_checkpoints()

    def _settle_torn_tails(self) -> int:
        """A writer that was killed mid-line leaves a last line without a newline, and (like
        the node, which starts a new file at every start) never appends to that file again.
        Such a tail is declared torn — dead-lettered, offset moved past it — once its file
        has not changed for ``torn_after`` seconds *and* a newer input file in the same
        directory has been written since. Returns the number of tails settled."""
        now = time.time()
        live = self.tailer.live()
        mtimes: dict[str, float] = {}
        for f in live:
            try:
                mtimes[f.key] = os.stat(f.path).st_mtime
            except OSError:
                pass
        settled = 0
        for f in live:
            mt = mtimes.get(f.key)
            if mt is None or now - mt < self.torn_after:
                continue
            folder = os.path.dirname(f.path)
            if not any(mtimes.get(o.key, 0) > mt and os.path.dirname(o.path) == folder for o in live if o is not f):
                continue
            fh = self.tailer.open(f)
            if fh is None:
                continue
            fh.seek(f.offset)
            rest = fh.read(1 << 20)
            if not rest or b"\n" in rest:
                continue  # nothing left, or complete lines the next pass will ship
            self._dead_letter([dead_letter(
                f.path, f.offset, "torn last line (no newline; the writer has moved on to a newer file)", rest)])
            f.offset += len(rest)
            settled += 1
        if settled:
            self._save_checkpoints()
        return settled

    def ship_pass(self) -> int:
        """One pass over every input file. Returns the number of lines consumed."""
        self.tailer.scan()
        total = 0
        for f in sorted(self.tailer.live(), key=lambda f: f.path):
            if self.stop_event.is_set():
                break
            if f.fh is None and self.tailer.unread_bytes(f) == 0:
                continue  # nothing new: not opened again (a stat, not an open, per pass)
            total += self._ship_file(f)
        if not self.stop_event.is_set():
            total += self._settle_torn_tails()
            self._retire_vanished()
        self.tailer.keep_handles()  # a descriptor per recent file, not one per file of the retention
        return total

    # -- main loop ------------------------------------------------------------------------------
    def run(self, once: bool = False) -> ShipStats:
        if not self.logs_dir.is_dir():
            raise ShipperError(f"{self.logs_dir}: no such directory")
        self.checkpoints.lock()
        try:
            self.tailer.restore(self.checkpoints.load())
            while not self.stop_event.is_set():
                consumed = self.ship_pass()
                if once and consumed == 0:
                    if not self.stop_event.is_set():
                        self._retire_vanished(final=True)
                    break
                if consumed == 0:
                    self.stop_event.wait(self.poll_interval)
        finally:
            self.tailer.close()
            self.checkpoints.unlock()
        return self.stats

    def partial_bytes(self) -> dict[str, int]:
        """Bytes after the checkpoint in each file (a partial last line, when caught up)."""
        return {f.path: n for f in self.files.values() if (n := self.tailer.unread_bytes(f)) > 0}
