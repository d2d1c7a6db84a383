"""Session log writer (inference.session_log) and the JSONL reader (contracts.logfiles):
schema validity, rotation by size and by UTC day (injected clock), retention, drain on
close, disk-full via a mock opener, spill overflow accounting, SIGKILL torn lines."""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from contracts.log_schema import validate_record
from inference.metrics import NodeMetrics
from inference.session_log import SessionLogWriter, serialise
from inference.session_record import build_feedback_record, build_session_record
from contracts.logfiles import CorruptLogError, JsonlLogReader, log_files, read_records

NAME_RE = r"^session-\d{4}-\d{2}-\d{2}\.\d{4}\.jsonl$"


class FakeClock:
    """Injectable UTC clock for day rotation and retention."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw) -> None:
        self.now += timedelta(**kw)


def rec(i: int, text: str = "如何退货？", session: str = "abc123") -> dict:
    return build_session_record(
        session_id=session, request_id=f"chatcmpl-{i:08d}", turn_index=i, prompt=text,
        response="请访问订单页面。" * 3, model_version="deepseek-7b-v1.5", duration_s=0.128,
        ttft_s=0.05, status="completed", input_tokens=12, output_tokens=30, finish_reason="stop")


def metric(reg: CollectorRegistry, name: str) -> float:
    return reg.get_sample_value(name) or 0.0


@pytest.fixture
def reg():
    return CollectorRegistry()


def test_records_written_valid_and_counted(tmp_path, reg):
    nm = NodeMetrics(reg)
    w = SessionLogWriter(tmp_path, metrics=nm, fsync_interval_s=0.05)
    for i in range(200):
        assert w.submit(rec(i))
    w.submit(build_feedback_record(rating="down", request_id="chatcmpl-00000001", comment="太慢了"))
    assert w.close(timeout=10) == 0
    records, bad = read_records(tmp_path)
    assert bad == []
    assert len(records) == 201
    for r in records:
        validate_record(r)
    assert [r["turn_index"] for r in records[:200]] == list(range(200))
    assert metric(reg, "seekwatch_log_records_total") == 201
    assert metric(reg, "seekwatch_log_dropped_total") == 0  # stays 0 in normal operation
    files = log_files(tmp_path)
    assert files and all(__import__("re").match(NAME_RE, f.name) for f in files)
    # one line per record, newline-terminated, UTF-8 Chinese kept readable
    raw = files[0].read_bytes()
    assert raw.endswith(b"\n") and "如何退货".encode() in raw


def test_rotation_by_size(tmp_path):
    line_len = len(serialise(rec(0)))
    w = SessionLogWriter(tmp_path, max_bytes=line_len * 5 + 10)
    for i in range(23):
        w.submit(rec(i))
    w.close()
    files = log_files(tmp_path)
    assert len(files) == 5
    assert [f.name.split(".")[1] for f in files] == ["0001", "0002", "0003", "0004", "0005"]
    assert all(f.stat().st_size <= line_len * 5 + 10 for f in files)
    records, bad = read_records(tmp_path)
    assert bad == [] and [r["turn_index"] for r in records] == list(range(23))


def test_oversized_single_record_still_written(tmp_path):
    w = SessionLogWriter(tmp_path, max_bytes=100)
    w.submit(rec(0, text="长" * 500))
    w.submit(rec(1))
    w.close()
    records, bad = read_records(tmp_path)
    assert len(records) == 2 and bad == []


def test_rotation_by_utc_day(tmp_path):
    clock = FakeClock(datetime(2026, 11, 29, 23, 59, 59, tzinfo=timezone.utc))
    w = SessionLogWriter(tmp_path, clock=clock)
    for i in range(3):
        w.submit(rec(i))
    assert w.flush(5)
    clock.advance(seconds=2)
    for i in range(3, 6):
        w.submit(rec(i))
    w.close()
    names = [f.name for f in log_files(tmp_path)]
    assert names == ["session-2026-11-29.0001.jsonl", "session-2026-11-30.0001.jsonl"]
    records, _ = read_records(tmp_path)
    assert [r["turn_index"] for r in records] == list(range(6))


def test_restart_never_appends_to_previous_file(tmp_path):
    """A restarted node starts a new sequence: it never appends to a possibly torn file."""
    clock = FakeClock(datetime(2026, 11, 29, 12, tzinfo=timezone.utc))
    for i in range(2):
        w = SessionLogWriter(tmp_path, clock=clock)
        w.submit(rec(i))
        w.close()
    assert [f.name for f in log_files(tmp_path)] == [
        "session-2026-11-29.0001.jsonl", "session-2026-11-29.0002.jsonl"]


def test_retention_at_start_and_daily(tmp_path):
    clock = FakeClock(datetime(2026, 11, 29, 12, tzinfo=timezone.utc))
    old = tmp_path / "session-2026-10-01.0001.jsonl"
    edge = tmp_path / "session-2026-10-30.0001.jsonl"   # exactly 30 days: kept
    other = tmp_path / "notes.jsonl"                      # not ours: never touched
    for p in (old, edge, other):
        p.write_text(json.dumps({"x": 1}) + "\n")
    w = SessionLogWriter(tmp_path, retention_days=30, clock=clock)
    assert not old.exists() and edge.exists() and other.exists()
    w.submit(rec(0))
    assert w.flush(5)
    today_file = w.current_path
    clock.advance(days=2)               # the daily check runs when the UTC day changes
    w.submit(rec(1))
    assert w.flush(5)
    assert not edge.exists() and today_file.exists() and other.exists()
    clock.advance(days=31)
    w.submit(rec(2))
    assert w.flush(5)
    w.close()
    assert not today_file.exists()
    assert [r["turn_index"] for r in read_records(tmp_path, dataset="seekwatch.session")[0]] == [2]


def test_drain_on_close(tmp_path, reg):
    nm = NodeMetrics(reg)
    w = SessionLogWriter(tmp_path, metrics=nm)
    r0 = rec(0)
    n = 5000
    for i in range(n):
        w.submit(dict(r0, turn_index=i))
    assert w.close(timeout=30) == 0
    assert w.pending == 0
    records, bad = read_records(tmp_path)
    assert len(records) == n and bad == []
    assert metric(reg, "seekwatch_log_records_total") == n
    assert metric(reg, "seekwatch_log_dropped_total") == 0
    # after close nothing is accepted silently
    assert w.submit(rec(1)) is False
    assert metric(reg, "seekwatch_log_dropped_total") == 1


class FlakyDisk:
    """Mock opener: files whose write() fails with ENOSPC while ``full`` is set — after
    writing half of the bytes, like a real disk filling up mid-write."""

    def __init__(self) -> None:
        self.full = False
        self.failures = 0

    def __call__(self, path: str):
        disk = self
        real = open(path, "ab", buffering=0)

        class F:
            def write(self, data):
                if disk.full:
                    disk.failures += 1
                    real.write(bytes(data[: len(data) // 2]))
                    raise OSError(errno.ENOSPC, "No space left on device (mock)")
                return real.write(data)

            def __getattr__(self, name):
                return getattr(real, name)

        return F()


def test_disk_full_mock_opener_spills_then_recovers_with_zero_loss(tmp_path, reg, caplog):
    """Uses a mock opener (FlakyDisk) whose writes raise ENOSPC: records wait in the spill,
    one error is logged for the episode, and after the disk frees up every record is
    written exactly once with no torn line."""
    nm = NodeMetrics(reg)
    disk = FlakyDisk()
    w = SessionLogWriter(tmp_path, metrics=nm, opener=disk, retry_interval_s=0.02)
    w.submit(rec(0))
    assert w.flush(5)
    disk.full = True
    with caplog.at_level(logging.ERROR, logger="inference.session_log"):
        for i in range(1, 101):
            w.submit(rec(i))
        deadline = time.monotonic() + 5
        while disk.failures < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert disk.failures >= 5
        assert w.pending == 100
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "No space left" in errors[0].getMessage()
        disk.full = False
        assert w.flush(5)
    assert w.close() == 0
    records, bad = read_records(tmp_path)
    assert bad == []
    assert [r["turn_index"] for r in records] == list(range(101))
    assert metric(reg, "seekwatch_log_records_total") == 101
    assert metric(reg, "seekwatch_log_dropped_total") == 0


def test_disk_full_mock_spill_overflow_and_close_timeout_are_counted(tmp_path, reg):
    """Mock opener stays full: the spill bound (spill_max) and close(timeout) decide what
    is dropped, and log_dropped_total counts exactly those records."""
    nm = NodeMetrics(reg)
    disk = FlakyDisk()
    disk.full = True
    w = SessionLogWriter(tmp_path, metrics=nm, opener=disk, spill_max=10, retry_interval_s=0.02)
    accepted = sum(w.submit(rec(i)) for i in range(15))
    assert accepted == 10
    assert metric(reg, "seekwatch_log_dropped_total") == 5
    assert w.close(timeout=0.3) == 10
    assert metric(reg, "seekwatch_log_dropped_total") == 15
    assert metric(reg, "seekwatch_log_records_total") == 0
    records, bad = read_records(tmp_path)
    assert records == [] and bad == []  # the half-writes were cut back


def test_unwritable_directory_mock_opener_recovers(tmp_path, reg):
    """Mock opener that raises PermissionError until fixed: no records lost."""
    state = {"ok": False}

    def opener(path):
        if not state["ok"]:
            raise PermissionError(errno.EACCES, "Permission denied (mock)", path)
        return open(path, "ab", buffering=0)

    nm = NodeMetrics(reg)
    w = SessionLogWriter(tmp_path, metrics=nm, opener=opener, retry_interval_s=0.02)
    for i in range(5):
        w.submit(rec(i))
    time.sleep(0.1)
    assert w.pending == 5
    state["ok"] = True
    assert w.flush(5)
    w.close()
    assert len(read_records(tmp_path)[0]) == 5
    assert metric(reg, "seekwatch_log_dropped_total") == 0


def test_unserialisable_values_do_not_kill_the_writer(tmp_path):
    w = SessionLogWriter(tmp_path)
    r = rec(0)
    r["odd"] = {1, 2}  # a set: default=str keeps it
    w.submit(r)
    w.submit(rec(1))
    w.close()
    assert len(read_records(tmp_path)[0]) == 2


# ------------------------------------------------------------------ reader


def test_reader_sets_aside_torn_last_line(tmp_path):
    w = SessionLogWriter(tmp_path)
    for i in range(3):
        w.submit(rec(i))
    w.close()
    f = log_files(tmp_path)[0]
    line = serialise(rec(3))
    with open(f, "ab") as fh:
        fh.write(line[: len(line) // 2])  # what a SIGKILL mid-write leaves
    r = JsonlLogReader(tmp_path)
    records = list(r)
    assert [x["turn_index"] for x in records] == [0, 1, 2]
    assert len(r.torn) == 1 and r.torn[0].line_no == 4 and r.invalid == []


def test_reader_torn_line_that_happens_to_parse_is_still_set_aside(tmp_path):
    f = tmp_path / "session-2026-11-29.0001.jsonl"
    f.write_bytes(serialise({"a": 1}) + b'{"b": 2}')  # complete JSON, missing "\n"
    r = JsonlLogReader(tmp_path)
    assert list(r) == [{"a": 1}] and len(r.torn) == 1


def test_reader_reports_invalid_line_mid_file(tmp_path):
    f = tmp_path / "session-2026-11-29.0001.jsonl"
    f.write_bytes(serialise({"a": 1}) + b"not json\n" + b"[1,2]\n" + b"\xff\xfe\n" + serialise({"a": 2}))
    r = JsonlLogReader(tmp_path)
    assert list(r) == [{"a": 1}, {"a": 2}]
    assert [(b.line_no, b.reason) for b in r.invalid] == [
        (2, "invalid-json"), (3, "not-an-object"), (4, "not-utf8")]
    with pytest.raises(CorruptLogError):
        list(JsonlLogReader(tmp_path, strict=True))


def test_reader_orders_files_by_day_then_sequence(tmp_path):
    for name, v in [("session-2026-11-30.0001.jsonl", 3), ("session-2026-11-29.0010.jsonl", 2),
                    ("session-2026-11-29.0002.jsonl", 1)]:
        (tmp_path / name).write_bytes(serialise({"v": v}))
    assert [r["v"] for r in JsonlLogReader(tmp_path)] == [1, 2, 3]
    lines = list(JsonlLogReader(tmp_path).lines())
    assert lines[0].offset == 0 and lines[0].end_offset == len(serialise({"v": 1}))


def test_reader_missing_directory_is_empty(tmp_path):
    assert list(JsonlLogReader(tmp_path / "nope")) == []


_KILL_CHILD = textwrap.dedent("""
    import sys
    from inference.session_log import SessionLogWriter
    from inference.session_record import build_session_record
    w = SessionLogWriter(sys.argv[1], max_bytes=4 * 1024 * 1024, fsync_interval_s=0.05)
    big = "长回复，包含手机13812345678。" * 4000
    i = 0
    print("ready", flush=True)
    while True:
        w.submit(build_session_record(
            session_id="s1", request_id="chatcmpl-%d" % i, turn_index=i, prompt="你好", response=big,
            model_version="m", duration_s=0.1, ttft_s=0.01, status="completed",
            input_tokens=1, output_tokens=1))
        i += 1
        if w.pending > 200:
            import time; time.sleep(0.001)
""")


def test_sigkill_mid_write_leaves_at_most_a_partial_last_line(tmp_path):
    """A real subprocess writing large records is SIGKILLed; the reader yields only whole,
    schema-valid records and sets any partial last line aside."""
    proc = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, str(tmp_path)],
                            stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if sum(f.stat().st_size for f in log_files(tmp_path)) > 6 * 1024 * 1024:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    r = JsonlLogReader(tmp_path)
    records = list(r)
    assert len(records) > 5
    for x in records:
        validate_record(x)
        assert "13812345678" not in x["response"]
    assert r.invalid == []
    files = log_files(tmp_path)
    for b in r.torn:  # only ever the last line of a file
        assert b.offset + len(b.excerpt.encode()) <= b.path.stat().st_size
        with open(b.path, "rb") as fh:
            fh.seek(b.offset)
            assert b"\n" not in fh.read()
    assert len(r.torn) <= len(files)


def test_interpreter_exit_without_close_still_drains(tmp_path):
    """A process that forgets close(): the atexit hook drains the queue."""
    code = textwrap.dedent("""
        import sys
        from inference.session_log import SessionLogWriter
        w = SessionLogWriter(sys.argv[1])
        for i in range(2000):
            w.submit({"i": i, "text": "没有调用 close"})
    """)
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[2])
    records, bad = read_records(tmp_path)
    assert bad == [] and [r["i"] for r in records] == list(range(2000))


def test_disk_full_mock_retries_on_a_timer_not_per_record(tmp_path):
    """Mock opener (FlakyDisk) stays full while records keep arriving: the writer retries
    every retry_interval_s, not once per submitted record."""
    disk = FlakyDisk()
    disk.full = True
    w = SessionLogWriter(tmp_path, opener=disk, retry_interval_s=0.25)
    r0 = rec(0)
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 0.6:
        w.submit(dict(r0, turn_index=i))
        i += 1
        time.sleep(0.002)
    assert 1 <= disk.failures <= 4, disk.failures
    disk.full = False
    assert w.flush(5)
    w.close()
    assert len(read_records(tmp_path)[0]) == i


def test_lines_serialised_by_the_caller_and_records_are_written_in_order(tmp_path, reg):
    """submit() takes a record dict (serialised on the writer thread) or a line already
    serialised by the caller (written as is); both count, in submission order, and an
    unserialisable record is counted as dropped without stopping the writer."""
    nm = NodeMetrics(reg)
    w = SessionLogWriter(tmp_path, metrics=nm)
    circular: dict = {"turn_index": -1}
    circular["self"] = circular
    for i in range(5):
        assert w.submit(serialise(rec(i)) if i % 2 else rec(i))
    w.submit(circular)
    w.submit(serialise(rec(99)))
    assert w.close() == 0
    records, bad = read_records(tmp_path)
    assert not bad
    assert [r["turn_index"] for r in records] == [0, 1, 2, 3, 4, 99]
    assert metric(reg, "seekwatch_log_dropped_total") == 1
    assert metric(reg, "seekwatch_log_records_total") == 6
    assert w.pending == 0


def test_write_now_ends_the_linger(tmp_path):
    """write_now() (the node is idle) ends the linger: with a 60 s linger the queued
    records wait, and write_now takes them to disk now."""
    w = SessionLogWriter(tmp_path, linger_s=60)
    try:
        w.write_now()  # nothing queued: nothing to do, and no later record skips its linger
        w.submit(serialise(rec(0)))
        w.submit(serialise(rec(1)))
        time.sleep(0.3)
        assert w.written == 0  # lingering for company
        w.write_now()
        deadline = time.monotonic() + 10
        while w.written < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.written == 2
    finally:
        w.close()
    assert [r["turn_index"] for r in read_records(tmp_path)[0]] == [0, 1]


def test_a_record_is_one_line_for_every_line_splitter():
    """U+2028/U+2029/NEL in model output: json leaves them raw, str.splitlines() breaks at them.

    The CI once cut a demo record in two this way; the writer escapes them so any reader
    (Python's splitlines, log tailers, JavaScript) sees exactly one line per record.
    """
    record = {"response": "第一行\u2028第二行\u2029三\x85四\n五", "n": 1}
    line = serialise(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    text = line.decode("utf-8")
    assert len(text.splitlines()) == 1
    assert json.loads(text) == record
    assert "第一行" in text  # still readable, not \\u-escaped Chinese


class _CountingFile:
    """A real file whose write() calls are counted (the writer's batches)."""

    def __init__(self, path: str, writes: list[int]):
        self._f = open(path, "ab", buffering=0)
        self._writes = writes

    def write(self, data: bytes) -> int:
        self._writes.append(bytes(data).count(b"\n"))
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_records_arriving_together_share_one_write():
    """The writer lingers after the first record so the next ones join its batch: a burst
    of turns costs one wake-up and one write(), not one each."""
    import tempfile

    writes: list[int] = []
    d = tempfile.mkdtemp()
    w = SessionLogWriter(d, opener=lambda p: _CountingFile(p, writes), linger_s=2.0)
    for i in range(20):
        w.submit(rec(i))
    assert w.flush(10)
    w.close()
    assert sum(writes) == 20 and len(writes) <= 2, writes


def test_flush_and_close_do_not_wait_for_the_linger(tmp_path):
    """A 60 s linger would make flush(10) fail if flush did not cut it short."""
    w = SessionLogWriter(tmp_path, linger_s=60.0)
    w.submit(rec(1))
    assert w.flush(10)
    w.submit(rec(2))
    assert w.close(10) == 0
    assert len(log_files(tmp_path)[0].read_text().splitlines()) == 2
