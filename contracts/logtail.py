"""Follow a session-log directory as it grows: the one tailer of the shipper, the dashboard and
NextChat's balance query.

Why one: each reader needs the same answers to the same questions — which files are there
(:func:`contracts.logfiles.log_files`), is this the file I read before, where did I stop —
and a reader that answered them differently would count a rotated file twice or not at all.

* **Identity.** A file is its device + inode (``key``), not its name: a file renamed by
  rotation (``x.jsonl`` -> ``x.jsonl.1``) keeps its offset, and an open handle is kept so a
  file renamed to a name that is not read any more can still be drained. The first line's
  fingerprint guards against inode reuse: a new file on an old inode starts again at 0.
* **Truncation.** A file shorter than the offset read (copytruncate) starts again at 0.
* **Whole lines only.** :meth:`LogTailer.lines` and :meth:`LogTailer.read_block` return
  complete ``\\n``-terminated lines; bytes after the last newline wait for the writer.
* **Rotated away.** A file renamed to a name that is not a log file's, or deleted, is in
  :meth:`LogTailer.vanished`; a reader that still has its handle reads what was appended
  since its last read through it, and lets it go (:meth:`LogTailer.forget`) once
  :meth:`LogTailer.writer_done` says its writer has left it: a writer appends through its
  own descriptor after a rename until it reopens its path. Handles stay open between
  reads for the ``keep_open`` most recently written files (:meth:`LogTailer.keep_handles`),
  so a file rotated away between two reads is still drained, without a descriptor for every
  old file of a long retention.
* **The caller commits.** Reading never moves ``TailedFile.offset``: the caller sets it once
  it has used the lines (the shipper only after the store acknowledged them), so a crash
  re-reads rather than skips.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from contracts.logfiles import log_files, sort_key

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
FINGERPRINT_BYTES = 4096
KEEP_OPEN = 16          # handles kept between reads: the most recently written files
WRITER_DONE_S = 30.0    # a rotated-away file unchanged this long is done with


def first_line_fingerprint(first_line: bytes) -> str:
    """The identity of a file's content: a hash of (the start of) its first line."""
    return hashlib.sha1(first_line[:FINGERPRINT_BYTES]).hexdigest()


@dataclass
class TailedFile:
    key: str                          # "dev:inode"
    path: str
    offset: int = 0                   # bytes used so far, always at a line boundary
    fingerprint: str | None = None
    fh: BinaryIO | None = None        # open binary handle (kept across renames)
    seen: bool = True                 # present in the last scan


@dataclass(frozen=True)
class RawLine:
    """One complete line without its ``\\n``; ``end_offset`` is where the next line starts."""

    file_key: str
    end_offset: int
    raw: bytes

    @property
    def offset(self) -> int:
        return self.end_offset - len(self.raw) - 1


class LogTailer:
    """The files of ``log_dir`` (not under ``exclude``), tracked by identity.

    ``scan()`` discovers files and checks identities; ``live()`` are the files present now in
    write order, ``vanished()`` those gone since the last scan (still open when they were
    read before). ``snapshot()``/``restore()`` carry offsets across restarts.
    """

    def __init__(self, log_dir: str | os.PathLike[str], *, exclude: Iterable[str | os.PathLike[str]] = (),
                 keep_open: int = KEEP_OPEN) -> None:
        self.log_dir = Path(log_dir)
        self.exclude = [str(e) for e in exclude]
        self.keep_open = keep_open
        self.files: dict[str, TailedFile] = {}

    # -- discovery ------------------------------------------------------------------------
    def scan(self) -> None:
        for f in self.files.values():
            f.seen = False
        for p in log_files(self.log_dir, exclude=self.exclude):
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue
            key = f"{st.st_dev}:{st.st_ino}"
            tracked = self.files.get(key)
            if tracked is None:
                tracked = self.files[key] = TailedFile(key, str(p))
            tracked.path = str(p)
            tracked.seen = True
            self._check_identity(tracked, st.st_size)

    def live(self) -> list[TailedFile]:
        return sorted((f for f in self.files.values() if f.seen), key=lambda f: sort_key(Path(f.path)))

    def vanished(self) -> list[TailedFile]:
        return [f for f in self.files.values() if not f.seen]

    def _check_identity(self, f: TailedFile, size: int) -> None:
        if f.offset == 0:
            return
        if size < f.offset:
            log.warning("%s shrank below the offset read (%d < %d): truncated, reading from 0", f.path, size, f.offset)
            self.reset(f)
            return
        if f.fingerprint is not None:
            first = self._first_line(f.path)
            if first is not None and first_line_fingerprint(first) != f.fingerprint:
                log.warning("%s is a new file on a reused inode: reading from 0", f.path)
                self.reset(f)

    @staticmethod
    def _first_line(path: str) -> bytes | None:
        try:
            with open(path, "rb") as fh:
                head = fh.read(FINGERPRINT_BYTES)
        except OSError:
            return None
        nl = head.find(b"\n")
        return head[:nl] if nl >= 0 else (head if len(head) >= FINGERPRINT_BYTES else None)

    def reset(self, f: TailedFile) -> None:
        """Read ``f`` again from the start (it was truncated or replaced)."""
        f.offset = 0
        f.fingerprint = None
        self.close_file(f)

    def forget(self, f: TailedFile) -> None:
        self.close_file(f)
        self.files.pop(f.key, None)

    def writer_done(self, f: TailedFile, idle_after: float = WRITER_DONE_S, now: float | None = None) -> bool:
        """Whether a vanished file can be let go: there is no handle to read it by, or what
        its handle reads has not changed for ``idle_after`` seconds (0: at once)."""
        if f.fh is None or idle_after <= 0:
            return True
        try:
            mtime = os.fstat(f.fh.fileno()).st_mtime
        except OSError:
            return True
        return (time.time() if now is None else now) - mtime >= idle_after

    @staticmethod
    def held_size(f: TailedFile) -> int | None:
        """The size of the file behind ``f``'s handle (a vanished file has no path to stat);
        None without a handle."""
        if f.fh is None:
            return None
        try:
            return os.fstat(f.fh.fileno()).st_size
        except OSError:
            return None

    def keep_handles(self) -> None:
        """Close the handles of live files beyond the ``keep_open`` most recently written
        (those of vanished files stay: they are being drained)."""
        held = []
        for f in self.files.values():
            if f.fh is not None and f.seen:
                try:
                    held.append((os.fstat(f.fh.fileno()).st_mtime, f))
                except OSError:
                    self.close_file(f)
        if len(held) > self.keep_open:
            held.sort(key=lambda pair: pair[0], reverse=True)
            for _, f in held[self.keep_open:]:
                self.close_file(f)

    @staticmethod
    def close_file(f: TailedFile) -> None:
        if f.fh is not None:
            f.fh.close()
            f.fh = None

    def close(self) -> None:
        for f in self.files.values():
            self.close_file(f)

    # -- offsets across restarts --------------------------------------------------------------
    def snapshot(self) -> dict[str, dict]:
        return {k: {"path": f.path, "offset": f.offset, "fingerprint": f.fingerprint} for k, f in self.files.items()}

    def restore(self, entries: dict[str, dict]) -> None:
        for key, entry in entries.items():
            self.files[key] = TailedFile(key, entry["path"], int(entry["offset"]), entry.get("fingerprint"), seen=False)

    # -- reading ------------------------------------------------------------------------------
    def open(self, f: TailedFile) -> BinaryIO | None:
        """The file's handle, opened once and kept (a rename does not lose it); ``None`` when
        it is gone or its name now points at another file."""
        if f.fh is None:
            try:
                f.fh = open(f.path, "rb")  # noqa: SIM115 - kept open to survive renames
            except FileNotFoundError:
                return None
            st = os.fstat(f.fh.fileno())
            if f"{st.st_dev}:{st.st_ino}" != f.key:  # replaced between scan and open
                self.close_file(f)
                return None
        return f.fh

    def _note_first_line(self, f: TailedFile, start: int, first: bytes) -> None:
        if start == 0 and f.fingerprint is None:
            f.fingerprint = first_line_fingerprint(first)

    def lines(self, f: TailedFile) -> Iterator[RawLine]:
        """The complete lines after ``f.offset``, in order (blank ones included)."""
        fh = self.open(f)
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
                self._note_first_line(f, pos, raw)
                pos += nl + 1 - start
                start = nl + 1
                yield RawLine(f.key, pos, raw)
            buf = buf[start:]

    def read_block(self, f: TailedFile, start: int, limit: int) -> bytes:
        """Whole lines from byte ``start``: a block ending in ``\\n``, or ``b""`` when no
        complete line follows yet. Reads about ``limit`` bytes, more when one line is longer."""
        fh = self.open(f)
        if fh is None:
            return b""
        fh.seek(start)
        buf = fh.read(limit)
        cut = buf.rfind(b"\n")
        while cut < 0 and buf:
            more = fh.readline()  # a single line longer than ``limit``: read on to its end
            if not more:
                return b""
            buf += more
            cut = buf.rfind(b"\n")
        if cut < 0:
            return b""
        block = buf[: cut + 1]
        self._note_first_line(f, start, block[: block.find(b"\n")])
        return block

    def unread_bytes(self, f: TailedFile) -> int:
        """Bytes after the offset (a partial last line when the caller is caught up)."""
        try:
            return max(0, os.path.getsize(f.path) - f.offset)
        except OSError:
            return 0
