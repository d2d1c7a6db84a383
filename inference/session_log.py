"""The session log: one JSON line per chat turn (and per feedback), written off the request path.

Why this shape:

* ``submit()`` is called on the request path, so it only appends to an in-memory queue
  under a lock (no serialisation, no I/O). A single writer thread does the writes,
  rotation and fsyncs, and serialises records that were not submitted as lines already.
* Each batch of whole lines goes to the file in **one** ``write()`` on an unbuffered file,
  then ``flush``; ``fsync`` runs on a timer (default every 1 s), on rotation and on close.
  A crash (SIGKILL) can therefore leave at most a partial *last* line, which
  ``contracts.logfiles`` detects and sets aside. A write that fails half way is
  truncated back to the last whole line before it is retried.
* Files are ``{prefix}-YYYY-MM-DD.NNNN.jsonl`` (UTC day, 4-digit sequence; the format
  every reader shares is :mod:`contracts.logfiles`). A new file is
  started when the day changes, when the current file would exceed ``max_bytes``, after a
  write error, and at every start (a restarted node never appends to a file a killed
  process may have torn). Names sort in write order.
* Files whose day is older than ``retention_days`` are deleted at start and once per UTC
  day (a 180-day GDPR-style retention; the log store has its own).
* Never lost silently: if the disk is full or the directory unwritable, records stay in a
  bounded in-memory spill (``spill_max`` records, counting the queue), one error is logged
  per failure episode, and writing is retried every ``retry_interval_s``.
  ``log_dropped_total`` counts only records that truly could not be kept: spill overflow,
  a record that cannot be serialised, a submit after close, or records still unwritten
  when ``close(timeout)`` gives up. ``log_records_total`` counts records written.

The writer does not mask anything: records are built by ``inference.session_record``,
which masks PII before they are submitted.
"""
from __future__ import annotations

import atexit
import errno
import logging
import os
import threading
import time
import weakref
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable

from contracts.jsonline import dumps_line
from contracts.logfiles import file_name, file_name_re

if TYPE_CHECKING:  # pragma: no cover
    from inference.metrics import NodeMetrics

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: Upper bound on the bytes handed to one write() call.
MAX_BATCH_BYTES = 4 * MiB
#: How long the writer waits after the first queued record for others to join its batch.
#: Waking a thread per record costs ~0.3 ms of CPU when the cores were idle in between
#: (measured: docs/benchmarks.md, instrumentation overhead); batching a few turns per wake
#: keeps the log's cost near the ~0.1 ms of work per turn. The price: a SIGKILL can lose up
#: to this much more of the most recent records (a graceful stop drains everything).
#: The node ends the linger early when it is idle (:meth:`SessionLogWriter.write_now`): then
#: nothing runs that a wake-up could delay, and the record is on disk sooner.
LINGER_S = 0.05
#: A batch this large is written at once, linger or not.
LINGER_MAX_RECORDS = 256


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def default_opener(path: str) -> BinaryIO:
    """Open ``path`` for appending, unbuffered, so each ``write()`` is one syscall."""
    return open(path, "ab", buffering=0)


def serialise(record: dict[str, Any]) -> bytes:
    """One record → one UTF-8 line ending in ``\\n``.

    Chinese stays readable in the file; newlines and the other characters that some
    readers split lines at are escaped (:mod:`contracts.jsonline`), so a record is always
    exactly one line for every reader. Lone surrogates (possible in
    decoded model output) become JSON ``\\udXXX`` escapes rather than an encode error.
    """
    text = dumps_line(record, default=str)
    return text.encode("utf-8", "backslashreplace") + b"\n"


class SessionLogWriter:
    """Append-only JSONL writer with a queue, a writer thread, rotation, retention and spill.

    Usage::

        writer = SessionLogWriter("./var/log", metrics=node_metrics)
        writer.submit(build_session_record(...))   # request path, non-blocking
        ...
        writer.close(timeout=10)                    # graceful shutdown: drains the queue
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        max_bytes: int = 64 * MiB,
        retention_days: int = 180,
        spill_max: int = 100_000,
        metrics: "NodeMetrics | None" = None,
        *,
        prefix: str = "session",
        fsync_interval_s: float = 1.0,
        retry_interval_s: float = 1.0,
        linger_s: float = LINGER_S,
        clock: Callable[[], datetime] = utc_now,
        opener: Callable[[str], BinaryIO] = default_opener,
        start: bool = True,
    ) -> None:
        if max_bytes <= 0 or spill_max <= 0 or retention_days < 0:
            raise ValueError("max_bytes and spill_max must be > 0, retention_days >= 0")
        self.log_dir = Path(log_dir)
        self.max_bytes = int(max_bytes)
        self.retention_days = int(retention_days)
        self.spill_max = int(spill_max)
        self.metrics = metrics
        self.prefix = prefix
        self.fsync_interval_s = fsync_interval_s
        self.retry_interval_s = retry_interval_s
        self.linger_s = linger_s
        self._clock = clock
        self._opener = opener
        self._name_re = file_name_re(prefix)

        self._cv = threading.Condition()
        self._queue: deque[dict[str, Any]] = deque()   # submitted, not yet serialised
        self._lines: deque[bytes] = deque()             # serialised, not yet written (the spill)
        self._unwritten = 0                              # len(_queue) + len(_lines), under _cv
        self._closing = False
        self._closed = False
        self._deadline: float | None = None
        self._fsync_requested = False
        self._write_now = False
        self._lost_at_close = 0

        self._f: BinaryIO | None = None
        self._path: Path | None = None
        self._day: str | None = None
        self._size = 0
        self._dirty = False
        self._last_fsync = time.monotonic()
        self._retention_day: str | None = None

        self._failing = False
        self._overflowing = False
        #: Counters mirrored into NodeMetrics (also readable without metrics).
        self.written = 0
        self.dropped = 0
        self.write_errors = 0

        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._apply_retention(self._today())
        self._thread = threading.Thread(target=self._run, name="seekwatch-session-log", daemon=True)
        if start:
            self._thread.start()
        # Safety net: an interpreter exit without close() still drains (atexit runs before
        # daemon threads are frozen). close() unregisters it.
        ref = weakref.ref(self)
        self._atexit = lambda: (ref() is not None and ref().close(timeout=5.0))
        atexit.register(self._atexit)

    # ------------------------------------------------------------------ request path

    def submit(self, record: "dict[str, Any] | bytes") -> bool:
        """Queue ``record`` for writing; never blocks on I/O.

        ``record`` is a record dict, serialised on the writer thread, or one line already
        serialised by :func:`serialise` (bytes), which the writer only writes: the node
        serialises on the event loop right after the response, where the record is still
        in cache, and leaves the writer thread nothing but the I/O.
        The writer takes ownership: do not mutate ``record`` afterwards. Returns False
        (and counts the record in ``log_dropped_total``) only when it cannot be kept: the
        spill is full or the writer is closed.
        """
        with self._cv:
            if self._closing:
                reason = "writer closed"
            elif self._unwritten >= self.spill_max:
                reason = "spill full"
            else:
                self._queue.append(record)
                self._unwritten += 1
                if len(self._queue) == 1 or len(self._queue) >= LINGER_MAX_RECORDS:
                    self._cv.notify()  # the writer checks the queue before it waits: no wake-up is lost
                return True
            first = not self._overflowing
            self._overflowing = True
        self.count_dropped(1)
        if first:
            log.error("session log: dropping records (%s; %d unwritten, limit %d); "
                      "see seekwatch_log_dropped_total", reason, self._unwritten, self.spill_max)
        return False

    def write_now(self) -> None:
        """End the current linger: write what is queued without waiting for more records.
        For a caller that knows nothing else is running, so the wake-up delays nobody."""
        with self._cv:
            if self._queue:
                self._write_now = True
                self._cv.notify()

    # ------------------------------------------------------------------ control

    @property
    def pending(self) -> int:
        """Records submitted but not yet written (queue + spill)."""
        return self._unwritten

    @property
    def current_path(self) -> Path | None:
        return self._path

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written and fsynced; True on success."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._fsync_requested = True
            self._cv.notify_all()
            while self._unwritten or self._fsync_requested:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cv.wait(min(left, 0.05))
        return True

    def close(self, timeout: float = 10.0) -> int:
        """Stop accepting records, drain the queue, fsync and close the file.

        If records cannot be written within ``timeout`` seconds (disk still full), they
        are counted as dropped and logged. Returns the number dropped at close.
        """
        atexit.unregister(self._atexit)
        with self._cv:
            if self._closed:
                return 0
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout + 2.0)
        lost = 0
        with self._cv:
            if self._thread.is_alive() or self._unwritten:
                # The writer is stuck in a blocking call or gave up: whatever is left is lost.
                lost = self._unwritten
                self._queue.clear()
                self._lines.clear()
                self._unwritten = 0
            self._closed = True
        if lost:
            self.count_dropped(lost)
            log.error("session log: %d record(s) could not be written before shutdown", lost)
        return lost + self._lost_at_close

    def __enter__(self) -> "SessionLogWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writer thread

    def _today(self) -> str:
        return self._clock().astimezone(timezone.utc).strftime("%Y-%m-%d")

    def count_dropped(self, n: int) -> None:
        """Count ``n`` lost records in ``log_dropped_total``: the writer's own losses, and
        records the node could not build (never submitted)."""
        self.dropped += n
        if self.metrics is not None:
            self.metrics.observe_log_dropped(n)

    def _run(self) -> None:
        try:
            while True:
                try:
                    self._loop()
                    return
                except Exception:  # pragma: no cover - defensive: a bug must not stop logging
                    log.exception("session log writer: unexpected error; restarting the loop")
                    with self._cv:
                        if self._closing:
                            return
                        self._cv.wait(self.retry_interval_s)
        finally:
            try:
                self._close_file()
            finally:
                with self._cv:
                    self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while (not self._queue and not self._lines and not self._closing
                       and not self._fsync_requested):
                    self._cv.wait(self._wait_time())
                    if self._timers_due():
                        break
                if self._queue and not self._lines:
                    self._linger()
                batch = list(self._queue)
                self._queue.clear()
                self._write_now = False
                closing = self._closing
            # Serialise outside the lock: the request path only ever waits for an append.
            bad = 0
            for rec in batch:
                try:
                    self._lines.append(rec if type(rec) is bytes else serialise(rec))
                except Exception as exc:  # circular reference, ...
                    bad += 1
                    log.error("session log: record could not be serialised (%r); dropped", exc)
            if bad:
                with self._cv:
                    self._unwritten -= bad
                self.count_dropped(bad)

            ok = self._write_pending()
            self._timers(force_fsync=self._fsync_requested and ok)

            with self._cv:
                if ok and not self._lines and self._fsync_requested and not self._queue:
                    self._fsync_requested = False
                self._cv.notify_all()
                if closing and not self._queue and not self._lines:
                    self._fsync(force=True)
                    return
                if closing and self._deadline is not None and time.monotonic() >= self._deadline:
                    lost = self._unwritten
                    self._queue.clear()
                    self._lines.clear()
                    self._unwritten = 0
                    if lost:
                        self._lost_at_close = lost
                        self.count_dropped(lost)
                        log.error("session log: %d record(s) could not be written before shutdown "
                                  "(last error persists)", lost)
                    return
                if not ok:
                    # Back off before retrying. New records do not shorten the wait (under
                    # load that would retry per submit); close() does, to its deadline.
                    retry_at = time.monotonic() + self.retry_interval_s
                    while True:
                        now = time.monotonic()
                        until = retry_at
                        if self._closing and self._deadline is not None:
                            until = min(until, self._deadline)
                        if now >= until:
                            break
                        self._cv.wait(until - now)

    def _linger(self) -> None:
        """(Under ``_cv``.) Let more records join this batch, for at most ``linger_s``;
        a flush, a close, a full batch or :meth:`write_now` ends the wait at once."""
        until = time.monotonic() + self.linger_s
        while (not self._closing and not self._fsync_requested and not self._write_now
               and len(self._queue) < LINGER_MAX_RECORDS):
            left = until - time.monotonic()
            if left <= 0:
                return
            self._cv.wait(left)

    def _wait_time(self) -> float:
        return max(0.01, min(self.fsync_interval_s, 60.0) if self._dirty else 60.0)

    def _timers_due(self) -> bool:
        if self._dirty and time.monotonic() - self._last_fsync >= self.fsync_interval_s:
            return True
        return self._retention_day != self._today()

    def _timers(self, force_fsync: bool = False) -> None:
        self._fsync(force=force_fsync)
        today = self._today()
        if self._retention_day != today:
            self._apply_retention(today)
        if self._f is not None and self._day != today and not self._lines:
            # Day rolled over with nothing to write: close yesterday's file now.
            self._close_file()

    # ------------------------------------------------------------------ files

    def _existing(self) -> list[tuple[str, int, Path]]:
        out = []
        try:
            entries = list(os.scandir(self.log_dir))
        except OSError:
            return out
        for e in entries:
            mt = self._name_re.match(e.name)
            if mt:
                out.append((mt.group(1), int(mt.group(2)), Path(e.path)))
        return out

    def _open_new(self, day: str) -> None:
        seq = 1 + max((s for d, s, _ in self._existing() if d == day), default=0)
        path = self.log_dir / file_name(self.prefix, day, seq)
        self._f = self._opener(str(path))
        self._path, self._day, self._size = path, day, 0
        try:
            self._size = os.fstat(self._f.fileno()).st_size
        except (OSError, AttributeError, ValueError):
            pass

    def _close_file(self) -> None:
        if self._f is None:
            return
        try:
            self._fsync(force=True)
        finally:
            try:
                self._f.close()
            except OSError as exc:
                log.error("session log: closing %s failed: %s", self._path, exc)
            self._f = None

    def _fsync(self, force: bool = False) -> None:
        if self._f is None or not self._dirty:
            return
        if not force and time.monotonic() - self._last_fsync < self.fsync_interval_s:
            return
        try:
            os.fsync(self._f.fileno())
        except (OSError, AttributeError, ValueError) as exc:
            log.error("session log: fsync of %s failed: %s", self._path, exc)
        self._dirty = False
        self._last_fsync = time.monotonic()

    def _write_pending(self) -> bool:
        """Write spilled lines; True when the spill is empty afterwards."""
        while self._lines:
            try:
                today = self._today()
                if self._f is not None and self._day != today:
                    self._close_file()
                if self._f is None:
                    self._open_new(today)
                room = self.max_bytes - self._size
                take: list[bytes] = []
                nbytes = 0
                for line in self._lines:
                    if nbytes + len(line) > min(room, MAX_BATCH_BYTES) and not (
                            not take and self._size == 0):
                        break
                    take.append(line)
                    nbytes += len(line)
                    if nbytes >= MAX_BATCH_BYTES:
                        break
                if not take:  # current file is full
                    self._close_file()
                    continue
                self._write_all(b"".join(take))
            except OSError as exc:
                self.write_errors += 1
                if not self._failing:
                    self._failing = True
                    log.error("session log: cannot write to %s (%s); keeping %d record(s) in memory "
                              "(limit %d) and retrying every %.1fs",
                              self._path or self.log_dir, exc, self._unwritten, self.spill_max,
                              self.retry_interval_s)
                return False
            for _ in take:
                self._lines.popleft()
            n = len(take)
            self.written += n
            with self._cv:
                self._unwritten -= n
                if self._overflowing and self._unwritten < self.spill_max // 2:
                    self._overflowing = False
            if self.metrics is not None:
                self.metrics.observe_log_written(n)
            if self._failing:
                self._failing = False
                log.warning("session log: writing to %s again; spilled records kept", self._path)
        return True

    def _write_all(self, data: bytes) -> None:
        """One write() of whole lines; on failure, cut the file back so no torn line stays."""
        assert self._f is not None
        start = self._size
        view = memoryview(data)
        try:
            while view:
                n = self._f.write(view)
                if n is None:  # non-blocking raw file; not expected for regular files
                    raise OSError(errno.EAGAIN, "write would block")
                if n == 0:
                    raise OSError(errno.ENOSPC, "short write")
                view = view[n:]
            self._f.flush()
        except OSError:
            try:
                # Cut a partial write back to the last whole line and retry into the same
                # file (no pile of empty files during a long disk-full episode).
                self._f.truncate(start)
            except (OSError, AttributeError, ValueError):
                # Could not cut: retry into a fresh file, so the torn tail stays the last
                # line of this one, where the reader sets it aside.
                try:
                    self._f.close()
                except (OSError, AttributeError, ValueError):
                    pass
                self._f = None
                self._dirty = False
            raise
        self._size += len(data)
        self._dirty = True

    # ------------------------------------------------------------------ retention

    def _apply_retention(self, today: str) -> None:
        """Delete this writer's files whose UTC day is more than ``retention_days`` ago."""
        self._retention_day = today
        cutoff = (datetime.strptime(today, "%Y-%m-%d") - timedelta(days=self.retention_days)).strftime("%Y-%m-%d")
        for day, _, path in self._existing():
            if day < cutoff and path != self._path:
                try:
                    path.unlink()
                    log.info("session log: retention removed %s", path.name)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.error("session log: cannot remove expired %s: %s", path, exc)
