"""A lossless log shipper in the spirit of Filebeat: tails the node's JSON-lines session logs
and sends them to Elasticsearch/OpenSearch with ``_bulk``.

Guarantees and how they are kept:

* **No loss.** The offset of a file advances (in ``checkpoints.json``) only after every line
  up to it was acknowledged by the engine — indexed, already present, or written to the
  dead-letter file (fsynced) with its reason. A crash (even SIGKILL) re-sends at most the
  unacknowledged batch.
* **No duplicates.** Every document has an id from the record itself: ``request_id`` for a
  session turn, ``feedback_id`` for feedback; the bulk action is ``create`` (data streams
  allow nothing else), so a re-sent line answers 409 "already exists", which counts as done.
  A batch that may have reached the engine before (the first batch of each file after a
  start, a resend after a broken connection) is first checked with an ``ids`` query over
  ``seekwatch-*``, so a rollover in between cannot turn the re-send into a second copy.
* **Rotation.** Files are identified by device + inode, with a fingerprint of their first
  line against inode reuse. A file renamed by rotation keeps its offset (the shipper also
  keeps the open descriptor and drains it to EOF); a truncated file (copytruncate) restarts
  at 0. Inputs: ``*.jsonl`` and numbered rotations ``*.jsonl.N`` under the log directory.
* **Partial last line.** Bytes after the last newline are never sent: they wait until the
  writer completes the line. If the file vanishes (rotated away, deleted) while they still
  lack a newline, they go to the dead-letter file as "incomplete last line"; if the file
  stays but has not changed for ``torn_after`` seconds while a newer file in its directory
  has (a writer killed mid-line that started a new file), as "torn last line".
* **Engine down.** Connection errors, 429 and 5xx wait with exponential backoff (capped)
  and resume; per-item 429/5xx in a bulk response are retried alone.
* **Malformed lines** (invalid JSON, not an object, no id, or refused by the engine with a
  4xx such as a mapping error) go to ``dead-letter.ndjson`` with the reason and are counted;
  they never block the lines after them.

Checkpoint writes are atomic: temp file, fsync, rename, fsync of the directory.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from contracts.jsonline import dumps_line
from contracts.logstore import (
    FEEDBACK_STREAM,
    INDEX_PATTERN,
    SESSION_STREAM,
    StoreClient,
    StoreError,
    StoreUnavailable,
    iter_bulk_items,
)

log = logging.getLogger("seekwatch.ship")

FEEDBACK_DATASET = "seekwatch.feedback"
CHECKPOINT_FILE = "checkpoints.json"
DEAD_LETTER_FILE = "dead-letter.ndjson"
READ_CHUNK = 1 << 20
RETRYABLE_ITEM_STATUS = {429, 500, 502, 503, 504}


class ShipperError(RuntimeError):
    """Fatal: configuration the shipper cannot work around (bad credentials, state dir
    locked by another shipper)."""


@dataclass
class Stats:
    shipped: int = 0        # newly indexed documents
    duplicates: int = 0     # already present (409): re-sent after a crash or a retry
    dead_lettered: int = 0  # malformed or refused lines, with reasons in the dead-letter file
    retries: int = 0        # bulk requests or items sent again
    outages: int = 0        # times the engine became unreachable
    batches: int = 0
    blank_lines: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TrackedFile:
    key: str                    # "dev:inode"
    path: str
    offset: int = 0
    fingerprint: str | None = None
    fh: object | None = None    # open binary handle (kept across renames)
    seen: bool = True           # present in the last directory scan
    verified: bool = False      # first batch since start sent (it may repeat a crashed run's)


@dataclass
class Line:
    file_key: str
    end_offset: int             # offset just after this line's newline
    raw: bytes
    action: bytes | None = None
    doc_id: str | None = None


def _fingerprint(first_line: bytes) -> str:
    return hashlib.sha1(first_line[:4096]).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def is_input_name(name: str) -> bool:
    if name.endswith(".jsonl"):
        return True
    base, dot, suffix = name.rpartition(".")
    return bool(dot) and suffix.isdigit() and base.endswith(".jsonl")


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
        torn_after: float = 30.0,
    ) -> None:
        self.logs_dir = Path(logs_dir).resolve()
        self.state_dir = Path(state_dir).resolve() if state_dir else self.logs_dir / ".seekwatch-ship"
        self.client = client
        self.batch_docs = max(1, int(batch_docs))
        self.batch_bytes = max(1024, int(batch_bytes))
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.stop_event = stop_event or threading.Event()
        self.on_batch = on_batch
        self.torn_after = torn_after
        self.stats = Stats()
        self.files: dict[str, TrackedFile] = {}
        self._lock_fh = None
        self._engine_down_since: float | None = None
        self._refused: list[dict] = []  # lines the engine refused in the batch being sent

    # -- state ----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.state_dir / CHECKPOINT_FILE

    @property
    def dead_letter_path(self) -> Path:
        return self.state_dir / DEAD_LETTER_FILE

    def _acquire_lock(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.state_dir / "lock", "a+")  # noqa: SIM115 - held for the shipper's life
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise ShipperError(f"another shipper is using {self.state_dir}") from None
            raise
        self._lock_fh = fh

    def _load_checkpoints(self) -> None:
        try:
            data = json.loads(self.checkpoint_path.read_text("utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise ShipperError(f"unreadable checkpoint file {self.checkpoint_path}: {exc}") from None
        for key, entry in data.get("files", {}).items():
            self.files[key] = TrackedFile(key, entry["path"], int(entry["offset"]), entry.get("fingerprint"),
                                          seen=False)

    def _save_checkpoints(self) -> None:
        data = {
            "version": 1,
            "files": {k: {"path": f.path, "offset": f.offset, "fingerprint": f.fingerprint}
                      for k, f in self.files.items()},
        }
        atomic_write_json(self.checkpoint_path, data)

    def _dead_letter(self, entries: list[dict]) -> None:
        if not entries:
            return
        with open(self.dead_letter_path, "a", encoding="utf-8") as fh:
            for e in entries:
                fh.write(dumps_line(e) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.stats.dead_lettered += len(entries)
        first = entries[0]
        more = f" (and {len(entries) - 1} more in this batch)" if len(entries) > 1 else ""
        log.warning("dead-lettered a line of %s at offset %s: %s%s -> %s", first["file"], first["offset"],
                    first["reason"][:300], more, self.dead_letter_path)

    # -- discovery ------------------------------------------------------------------------
    def _scan(self) -> None:
        for f in self.files.values():
            f.seen = False
        state = str(self.state_dir)
        for root, dirs, names in os.walk(self.logs_dir):
            if root == state or root.startswith(state + os.sep):
                dirs[:] = []
                continue
            dirs[:] = [d for d in dirs if os.path.join(root, d) != state]
            for name in names:
                if not is_input_name(name):
                    continue
                path = os.path.join(root, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                key = f"{st.st_dev}:{st.st_ino}"
                tracked = self.files.get(key)
                if tracked is None:
                    tracked = self.files[key] = TrackedFile(key, path)
                tracked.path = path
                tracked.seen = True
                self._check_identity(tracked, st.st_size)

    def _first_line(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as fh:
                head = fh.read(4096)
        except OSError:
            return None
        nl = head.find(b"\n")
        return head[:nl] if nl >= 0 else (head if len(head) >= 4096 else None)

    def _check_identity(self, f: TrackedFile, size: int) -> None:
        if f.offset == 0:
            return
        if size < f.offset:
            log.warning("%s shrank below its checkpoint (%d < %d): truncated, reading from 0", f.path, size, f.offset)
            self._reset(f)
            return
        if f.fingerprint is not None:
            first = self._first_line(f.path)
            if first is not None and _fingerprint(first) != f.fingerprint:
                log.warning("%s is a new file on a reused inode: reading from 0", f.path)
                self._reset(f)

    def _reset(self, f: TrackedFile) -> None:
        f.offset = 0
        f.fingerprint = None
        if f.fh is not None:
            f.fh.close()
            f.fh = None

    # -- reading --------------------------------------------------------------------------
    def _open(self, f: TrackedFile):
        if f.fh is None:
            try:
                f.fh = open(f.path, "rb")  # noqa: SIM115 - kept open to survive renames
            except FileNotFoundError:
                return None
            st = os.fstat(f.fh.fileno())
            if f"{st.st_dev}:{st.st_ino}" != f.key:  # replaced between scan and open
                f.fh.close()
                f.fh = None
                return None
        return f.fh

    def _lines(self, f: TrackedFile) -> Iterator[Line]:
        fh = self._open(f)
        if fh is None:
            return
        pos = f.offset
        fh.seek(pos)
        buf = b""
        while True:
            chunk = fh.read(READ_CHUNK)
            if not chunk:
                return
            buf += chunk
            start = 0
            while True:
                nl = buf.find(b"\n", start)
                if nl < 0:
                    break
                raw = buf[start:nl]
                pos += nl + 1 - start
                start = nl + 1
                yield Line(f.key, pos, raw)
            buf = buf[start:]

    def _prepare(self, line: Line, f: TrackedFile) -> dict | None:
        """Fill in the bulk action, or return a dead-letter entry."""
        raw = line.raw.rstrip(b"\r")
        line.raw = raw

        def dead(reason: str) -> dict:
            return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "file": f.path,
                    "offset": line.end_offset - len(line.raw) - 1, "reason": reason,
                    "line": raw.decode("utf-8", errors="replace")}

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
        line.doc_id = doc_id
        line.action = json.dumps({"create": {"_index": index, "_id": doc_id}}).encode()
        if b"\n" in raw:  # cannot happen after the split, kept as a guard for the bulk framing
            return dead("embedded newline")
        return None

    # -- sending --------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        delay = min(self.max_backoff, 0.25 * (2 ** min(attempt, 16)))
        return delay * (0.75 + random.random() * 0.5)

    def _note_down(self, exc: Exception) -> None:
        if self._engine_down_since is None:
            self._engine_down_since = time.monotonic()
            self.stats.outages += 1
            log.warning("engine unreachable (%s): waiting and retrying", exc)

    def _note_up(self) -> None:
        if self._engine_down_since is not None:
            log.warning("engine reachable again after %.1fs: resuming", time.monotonic() - self._engine_down_since)
            self._engine_down_since = None

    def _drop_present(self, pending: list[Line]) -> list[Line] | None:
        """Drop lines whose id is already in the engine (any backing index). Used only when a
        batch may have been applied before: the first batch of a file after a (re)start and a
        resend after a lost connection. It keeps "create" idempotent across a rollover, where
        a 409 could not catch it (the id would be new to the new write index).
        Returns None when the engine cannot be asked right now."""
        ids = [ln.doc_id for ln in pending]
        present: set[str] = set()
        try:
            try:  # search sees refreshed documents only; a refresh needs the "maintenance" privilege
                self.client.refresh(INDEX_PATTERN)
            except StoreError as exc:
                if exc.status not in (403, 404):
                    raise
            for i in range(0, len(ids), 5000):  # under the default max_result_window
                chunk = ids[i:i + 5000]
                res = self.client.search(INDEX_PATTERN, {"query": {"ids": {"values": chunk}}, "size": len(chunk),
                                                         "_source": False})
                present.update(h["_id"] for h in res.get("hits", {}).get("hits", []))
        except StoreUnavailable as exc:
            self._note_down(exc)
            return None
        except StoreError as exc:
            if exc.status == 404:  # no such index yet: nothing can be there
                return pending
            if exc.status in RETRYABLE_ITEM_STATUS:
                self._note_down(exc)
                return None
            raise
        if present:
            self.stats.duplicates += len(present)
            log.info("skipping %d lines already in the engine (re-sent after a restart or outage)", len(present))
        return [ln for ln in pending if ln.doc_id not in present]

    def _send(self, batch: list[Line], f_by_key: dict[str, TrackedFile], ambiguous: bool = False) -> bool:
        """Send until every line is acknowledged (or dead-lettered). False if stopped."""
        pending = batch
        attempt = 0
        while pending:
            if self.stop_event.is_set():
                return False
            if ambiguous:
                checked = self._drop_present(pending)
                if checked is None:
                    self.stats.retries += 1
                    self.stop_event.wait(self._backoff(attempt))
                    attempt += 1
                    continue
                pending, ambiguous = checked, False
                if not pending:
                    break
            body = b"".join(b"%s\n%s\n" % (ln.action, ln.raw) for ln in pending)
            try:
                resp = self.client.bulk(body)
            except StoreUnavailable as exc:
                self._note_down(exc)
                self.stats.retries += 1
                ambiguous = True  # the request may have been applied before the connection broke
                self.stop_event.wait(self._backoff(attempt))
                attempt += 1
                continue
            except StoreError as exc:
                if exc.status in RETRYABLE_ITEM_STATUS:
                    self._note_down(exc)
                    self.stats.retries += 1
                    self.stop_event.wait(self._backoff(attempt))
                    attempt += 1
                    continue
                if exc.status == 413 and len(pending) > 1:
                    half = len(pending) // 2
                    return self._send(pending[:half], f_by_key) and self._send(pending[half:], f_by_key)
                if exc.status in (401, 403):
                    raise ShipperError(f"engine refused the credentials: {exc}") from None
                if len(pending) == 1:
                    ln = pending[0]
                    self._refused.append(self._dl_entry(ln, f_by_key, f"engine refused the request: {exc}"))
                    return True
                # A whole-request 4xx: isolate the culprit by halving.
                half = len(pending) // 2
                return self._send(pending[:half], f_by_key) and self._send(pending[half:], f_by_key)
            self._note_up()
            retry: list[Line] = []
            dead: list[dict] = []
            items = list(iter_bulk_items(resp))
            if len(items) != len(pending):
                raise ShipperError(f"bulk response has {len(items)} items for {len(pending)} actions")
            for ln, (_op, item) in zip(pending, items):
                status = int(item.get("status", 0))
                if status in (200, 201):
                    self.stats.shipped += 1
                elif status == 409:
                    self.stats.duplicates += 1
                elif status in RETRYABLE_ITEM_STATUS or status == 0:
                    retry.append(ln)
                else:
                    err = item.get("error") or {}
                    reason = f"engine refused the document ({status}): {err.get('type')}: {err.get('reason')}"
                    cause = err.get("caused_by")
                    if isinstance(cause, dict):
                        reason += f" (caused by {cause.get('type')}: {cause.get('reason')})"
                    dead.append(self._dl_entry(ln, f_by_key, reason))
            self._refused.extend(dead)  # written with the batch's other dead letters, in file order
            if retry:
                self.stats.retries += len(retry)
                self.stop_event.wait(self._backoff(attempt))
                attempt += 1
            pending = retry
        return True

    def _dl_entry(self, ln: Line, f_by_key: dict[str, TrackedFile], reason: str) -> dict:
        f = f_by_key.get(ln.file_key)
        return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "file": f.path if f else ln.file_key,
                "offset": ln.end_offset - len(ln.raw) - 1, "reason": reason,
                "line": ln.raw.decode("utf-8", errors="replace")}

    def _ship_file(self, f: TrackedFile) -> int:
        """Ship the complete lines of one file. Returns lines consumed."""
        consumed = 0
        batch: list[Line] = []
        batch_size = 0
        pending_dead: list[dict] = []
        last_offset = f.offset

        def flush() -> bool:
            nonlocal batch, batch_size, pending_dead
            self._refused = []
            if batch and not self._send(batch, self.files, ambiguous=not f.verified):
                return False
            if batch:
                f.verified = True
            self._dead_letter(sorted(pending_dead + self._refused, key=lambda e: e["offset"]))
            self._refused = []
            f.offset = last_offset
            self._save_checkpoints()
            self.stats.batches += 1
            batch, batch_size, pending_dead = [], 0, []
            if self.on_batch:
                self.on_batch(self)
            return True

        for ln in self._lines(f):
            if f.fingerprint is None and f.offset == 0 and ln.end_offset == len(ln.raw) + 1:
                f.fingerprint = _fingerprint(ln.raw)
            consumed += 1
            last_offset = ln.end_offset
            if not ln.raw.strip():
                self.stats.blank_lines += 1
            else:
                dead = self._prepare(ln, f)
                if dead is not None:
                    pending_dead.append(dead)
                else:
                    batch.append(ln)
                    batch_size += len(ln.raw) + len(ln.action) + 2
            if len(batch) >= self.batch_docs or batch_size >= self.batch_bytes or len(pending_dead) >= self.batch_docs:
                if not flush():
                    return consumed
            if self.stop_event.is_set():
                break
        if batch or pending_dead or last_offset != f.offset:
            flush()
        return consumed

    def _retire_vanished(self) -> None:
        """Files no longer under the log dir: drain an open handle (rotation by rename to a
        name we do not match, or deletion while open), then forget them."""
        changed = False
        for key in [k for k, f in self.files.items() if not f.seen]:
            f = self.files[key]
            if f.fh is not None:
                self._ship_file(f)
                rest = f.fh.read()
                if rest:
                    self._dead_letter([{"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        "file": f.path, "offset": f.offset,
                                        "reason": "incomplete last line (no newline) in a file that was rotated away",
                                        "line": rest.decode("utf-8", errors="replace")}])
                f.fh.close()
            del self.files[key]
            changed = True
        if changed:
            self._save_checkpoints()

    def _settle_torn_tails(self) -> int:
        """A writer that was killed mid-line leaves a last line without a newline, and (like
        the node, which starts a new file at every start) never appends to that file again.
        Such a tail is declared torn — dead-lettered, offset moved past it — once its file
        has not changed for ``torn_after`` seconds *and* a newer input file in the same
        directory has been written since. Returns the number of tails settled."""
        now = time.time()
        live = [f for f in self.files.values() if f.seen]
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
            fh = self._open(f)
            if fh is None:
                continue
            fh.seek(f.offset)
            rest = fh.read(1 << 20)
            if not rest or b"\n" in rest:
                continue  # nothing left, or complete lines the next pass will ship
            self._dead_letter([{"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "file": f.path,
                                "offset": f.offset,
                                "reason": "torn last line (no newline; the writer has moved on to a newer file)",
                                "line": rest.decode("utf-8", errors="replace")}])
            f.offset += len(rest)
            settled += 1
        if settled:
            self._save_checkpoints()
        return settled

    def ship_pass(self) -> int:
        """One pass over every input file. Returns the number of lines consumed."""
        self._scan()
        total = 0
        for f in sorted([f for f in self.files.values() if f.seen], key=lambda f: f.path):
            if self.stop_event.is_set():
                break
            total += self._ship_file(f)
        if not self.stop_event.is_set():
            total += self._settle_torn_tails()
            self._retire_vanished()
        return total

    # -- main loops -----------------------------------------------------------------------
    def run(self, once: bool = False) -> Stats:
        if not self.logs_dir.is_dir():
            raise ShipperError(f"{self.logs_dir}: no such directory")
        self._acquire_lock()
        try:
            self._load_checkpoints()
            while not self.stop_event.is_set():
                consumed = self.ship_pass()
                if once and consumed == 0:
                    break
                if consumed == 0:
                    self.stop_event.wait(self.poll_interval)
        finally:
            for f in self.files.values():
                if f.fh is not None:
                    f.fh.close()
                    f.fh = None
            if self._lock_fh is not None:
                self._lock_fh.close()
                self._lock_fh = None
        return self.stats

    def partial_bytes(self) -> dict[str, int]:
        """Bytes after the checkpoint in each file (a partial last line, when caught up)."""
        out = {}
        for f in self.files.values():
            try:
                size = os.path.getsize(f.path)
            except OSError:
                continue
            if size > f.offset:
                out[f.path] = size - f.offset
        return out
