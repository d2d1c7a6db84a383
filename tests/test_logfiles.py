"""The session-log file format every reader shares (contracts.logfiles) and the one tailer
(contracts.logtail): names, discovery, write order, identity across rename, truncation and
inode reuse."""
from __future__ import annotations

import os
from pathlib import Path

from contracts.logfiles import file_name, file_name_re, is_log_file_name, log_files
from contracts.logtail import LogTailer


def test_names_discovery_and_write_order(tmp_path):
    names = ["session-2026-11-02.0001.jsonl", "session-2026-11-01.0002.jsonl", "session-2026-11-01.0002.jsonl.1",
             "session-2026-11-01.0002.jsonl.3", "session-2026-11-01.0001.jsonl", "other.jsonl",
             "session-2026-11-01.0002.jsonl.2.gz", "notes.txt", "x.jsonl.tmp"]
    for n in names:
        (tmp_path / n).write_text("{}\n")
    (tmp_path / "node-b").mkdir()
    (tmp_path / "node-b" / "session-2026-11-01.0003.jsonl").write_text("{}\n")
    (tmp_path / ".state").mkdir()
    (tmp_path / ".state" / "kept-out.jsonl").write_text("{}\n")
    got = [str(p.relative_to(tmp_path)) for p in log_files(tmp_path, exclude=[tmp_path / ".state"])]
    assert got == ["session-2026-11-01.0001.jsonl", "session-2026-11-01.0002.jsonl.3", "session-2026-11-01.0002.jsonl.1",
                   "session-2026-11-01.0002.jsonl", "node-b/session-2026-11-01.0003.jsonl",
                   "session-2026-11-02.0001.jsonl", "other.jsonl"]
    assert file_name("session", "2026-11-01", 7) == "session-2026-11-01.0007.jsonl"
    assert file_name_re("session").match(file_name("session", "2026-11-01", 12345)).groups() == ("2026-11-01", "12345")
    assert is_log_file_name("a.jsonl.12") and not is_log_file_name("a.jsonl.1.gz") and not is_log_file_name("a.json")
    assert log_files(tmp_path / "missing") == []


def _read_all(t: LogTailer):
    out = []
    t.scan()
    for f in t.live():
        for ln in t.lines(f):
            out.append(ln.raw)
            f.offset = ln.end_offset
    return out


def test_tailer_follows_rename_truncation_and_inode_reuse(tmp_path):
    live = tmp_path / "a.jsonl"
    live.write_bytes(b"1\n2\npartial")
    t = LogTailer(tmp_path)
    assert _read_all(t) == [b"1", b"2"]  # a line without its newline waits
    with open(live, "ab") as fh:
        fh.write(b"-done\n")
    os.rename(live, tmp_path / "a.jsonl.1")  # rotation by rename keeps the offset
    live.write_bytes(b"3\n")
    assert _read_all(t) == [b"partial-done", b"3"]
    with open(live, "r+b") as fh:  # copytruncate: shorter than the offset read
        fh.truncate(0)
    live.write_bytes(b"4\n")
    assert _read_all(t) == [b"4"]
    snap = t.snapshot()
    t.close()
    rotated = tmp_path / "a.jsonl.1"
    st = rotated.stat()
    with open(rotated, "r+b") as fh:  # same inode, same size, other content: read again
        fh.write(b"X" * (st.st_size - 1) + b"\n")
    t2 = LogTailer(tmp_path)
    t2.restore(snap)
    assert _read_all(t2) == [b"X" * (st.st_size - 1)]
    assert Path(t2.live()[0].path).name == "a.jsonl.1"


def test_tailer_keeps_the_newest_handles_and_drains_a_file_rotated_away(tmp_path):
    """Handles stay open between reads for the ``keep_open`` most recently written files, so
    a file renamed out of the log directory's names after a read is still read to its end,
    and ``writer_done`` says when its writer (appending through its own descriptor) has left it."""
    import time

    paths = [tmp_path / f"s-{i}.jsonl" for i in range(3)]
    for i, p in enumerate(paths):
        p.write_bytes(b"%d\n" % i)
        os.utime(p, (1_000 + i, 1_000 + i))
    t = LogTailer(tmp_path, keep_open=2)
    assert sorted(_read_all(t)) == [b"0", b"1", b"2"]
    t.keep_handles()
    held = {Path(f.path).name for f in t.files.values() if f.fh is not None}
    assert held == {"s-1.jsonl", "s-2.jsonl"}  # the oldest file's handle is closed
    with open(paths[2], "ab") as writer:
        writer.write(b"appended before the rotation\n")
        writer.flush()
        os.rename(paths[2], tmp_path / "s-2.jsonl-20261204")  # not a log file's name any more
        t.scan()
        (gone,) = t.vanished()
        assert [ln.raw for ln in t.lines(gone)] == [b"appended before the rotation"]
        assert not t.writer_done(gone)  # just written: its writer may still append
        writer.write(b"appended after it\n")
        writer.flush()
    gone.offset = len(b"2\nappended before the rotation\n")
    assert [ln.raw for ln in t.lines(gone)] == [b"appended after it"]
    assert t.writer_done(gone, 30, now=time.time() + 31) and t.writer_done(gone, 0)
    t.keep_handles()
    assert gone.fh is not None  # a vanished file's handle is kept until it is let go
    t.forget(gone)
    assert gone.key not in t.files and gone.fh is None
