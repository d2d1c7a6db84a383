"""Shipper behaviour on the files themselves: rotation, partial last lines, truncation,
malformed lines (dead-letter with reason, counted, never blocking), documents the engine
refuses, the lock against two shippers, bad flags."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from monitor.logstore.shipper import Shipper, ShipperError
from tests.logstore.conftest import count_tag, wait_until
from tests.logstore.gen import append_lines, append_partial, dumps, records


def ship_once(logs, client, **kw) -> Shipper:
    s = Shipper(logs, client, **kw)
    s.run(once=True)
    return s


def dead_letters(logs) -> list[dict]:
    p = logs / ".seekwatch-ship" / "dead-letter.ndjson"
    return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []


def test_partial_last_line_waits_for_its_newline(tmp_path, store):
    tag = "partial"
    recs = list(records(3, seed=1, tag=tag))
    append_lines(tmp_path / "s.jsonl", recs[:2])
    line = dumps(recs[2])
    append_partial(tmp_path / "s.jsonl", line[:40])
    s = ship_once(tmp_path, store)
    assert s.stats.shipped == 2 and s.stats.dead_lettered == 0
    assert s.partial_bytes() == {str(tmp_path / "s.jsonl"): 40}
    append_partial(tmp_path / "s.jsonl", line[40:] + "\n")
    s = ship_once(tmp_path, store)
    assert s.stats.shipped == 1 and s.stats.dead_lettered == 0
    assert count_tag(store, tag) == 3


def test_malformed_lines_are_dead_lettered_with_reason_and_do_not_block(tmp_path, store):
    tag = "malformed"
    recs = list(records(6, seed=2, tag=tag))
    bad_type = dict(recs[5])
    bad_type["latency_ms"] = "fast"            # the engine refuses it: mapping error
    no_id = dict(recs[4])
    del no_id["request_id"]
    with open(tmp_path / "s.jsonl", "w", encoding="utf-8") as fh:
        fh.write(dumps(recs[0]) + "\n")
        fh.write("{not json\n")
        fh.write(dumps(recs[1]) + "\n")
        fh.write("[1, 2, 3]\n")
        fh.write("\n")
        fh.write(dumps(no_id) + "\n")
        fh.write(dumps(bad_type) + "\n")
        fh.write(dumps(recs[2]) + "\n")
        fh.write(dumps(recs[3]) + "\n")
    s = ship_once(tmp_path, store)
    assert s.stats.shipped == 4
    assert s.stats.dead_lettered == 4
    assert s.stats.blank_lines == 1
    reasons = [d["reason"] for d in dead_letters(tmp_path)]
    assert reasons[0].startswith("invalid JSON")
    assert reasons[1].startswith("not a JSON object")
    assert reasons[2].startswith("no usable request_id")
    assert "mapper_parsing_exception" in reasons[3] and "latency_ms" in reasons[3]
    assert dead_letters(tmp_path)[1]["line"] == "[1, 2, 3]"
    assert count_tag(store, tag) == 4
    # the dead-lettered lines are behind the checkpoint: a rerun does not repeat them
    s = ship_once(tmp_path, store)
    assert s.stats.dead_lettered == 0 and s.stats.shipped == 0


def test_rotation_by_rename_and_new_file_loses_nothing(tmp_path, store):
    tag = "rotate"
    recs = list(records(300, seed=3, tag=tag))
    live = tmp_path / "session.jsonl"
    stop = threading.Event()
    shipper = Shipper(tmp_path, store, poll_interval=0.05, batch_docs=50, stop_event=stop)
    t = threading.Thread(target=shipper.run, daemon=True)
    t.start()
    try:
        append_lines(live, recs[:100])
        wait_until(lambda: shipper.stats.shipped >= 100, 30, what="first 100")
        # rotate like logrotate (numbered) while lines are still unread in the old file
        append_lines(live, recs[100:150])
        os.rename(live, tmp_path / "session.jsonl.1")
        append_lines(live, recs[150:200])
        # and like the node (renamed to another *.jsonl name)
        os.rename(live, tmp_path / "session-20261128.jsonl")
        append_lines(live, recs[200:300])
        wait_until(lambda: shipper.stats.shipped + shipper.stats.duplicates >= 300, 30, what="all 300")
    finally:
        stop.set()
        t.join(10)
    assert shipper.stats.shipped == 300 and shipper.stats.dead_lettered == 0
    assert count_tag(store, tag) == 300


def test_rotated_away_file_is_drained_through_the_open_handle(tmp_path, store):
    tag = "drain"
    recs = list(records(60, seed=4, tag=tag))
    live = tmp_path / "session.jsonl"
    append_lines(live, recs[:20])
    stop = threading.Event()
    shipper = Shipper(tmp_path, store, poll_interval=0.05, stop_event=stop)
    t = threading.Thread(target=shipper.run, daemon=True)
    t.start()
    try:
        wait_until(lambda: shipper.stats.shipped >= 20, 30, what="first 20")
        append_lines(live, recs[20:40])
        os.rename(live, tmp_path / "session.old")       # a name the shipper does not watch
        append_lines(tmp_path / "session.old", recs[40:60])
        wait_until(lambda: shipper.stats.shipped >= 60, 30, what="drained")
    finally:
        stop.set()
        t.join(10)
    assert count_tag(store, tag) == 60


def test_a_long_retention_holds_a_descriptor_per_recent_file_only(tmp_path, store):
    """Forty files (a long retention): every line shipped, handles kept open only for the
    tailer's ``keep_open`` most recently written files between passes, and the newest file,
    rotated away after a pass, still drained through its kept handle."""
    tag = "many-files"
    recs = list(records(84, seed=43, tag=tag))
    for i in range(40):
        path = tmp_path / f"session-2026-10-{i // 28 + 1:02d}.{i % 28 + 1:04d}.jsonl"
        append_lines(path, recs[2 * i:2 * i + 2])
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    newest = tmp_path / "session-2026-10-02.0012.jsonl"
    s = Shipper(tmp_path, store, torn_after=60)
    s.checkpoints.lock()
    try:
        s.ship_pass()
        assert s.stats.shipped == 80
        held = [f for f in s.files.values() if f.fh is not None]
        assert len(held) == s.tailer.keep_open == 16 and any(f.path == str(newest) for f in held)
        append_lines(newest, recs[80:84])
        os.rename(newest, tmp_path / "session.old")       # a name the shipper does not watch
        s.ship_pass()
        assert s.stats.shipped == 84 and s.stats.dead_lettered == 0
    finally:
        s.tailer.close()
        s.checkpoints.unlock()
    assert count_tag(store, tag) == 84


def test_writer_still_appending_after_rotation_loses_nothing(tmp_path, store):
    # After a rename, the writer goes on through its own descriptor until it reopens its path,
    # and a buffered writer flushes blocks that end mid-line: the fragment seen right after
    # the rename is not a torn line, and lines written after the shipper's drain still count.
    tag = "rot-append"
    recs = list(records(40, seed=41, tag=tag))
    live, old = tmp_path / "session.jsonl", tmp_path / "session.old"
    append_lines(live, recs[:20])
    line = dumps(recs[20])
    append_partial(live, line[:30])
    s = Shipper(tmp_path, store, torn_after=60)
    s.checkpoints.lock()                                  # what run() does first
    try:
        s.ship_pass()
        assert s.stats.shipped == 20
        os.rename(live, old)                              # a name the shipper does not watch
        s.ship_pass()                                     # sees it gone, mid-line
        assert s.stats.dead_lettered == 0 and len(s.files) == 1
        append_partial(old, line[30:] + "\n")
        s.ship_pass()
        append_lines(old, recs[21:40])
        s.ship_pass()
        assert s.stats.shipped == 40 and s.stats.dead_lettered == 0
    finally:
        s.tailer.close()
        s.checkpoints.unlock()
    assert count_tag(store, tag) == 40 and dead_letters(tmp_path) == []


def test_rotated_away_fragment_is_dead_lettered_once_its_handle_is_idle(tmp_path, store):
    tag = "rot-idle"
    recs = list(records(11, seed=42, tag=tag))
    live, old = tmp_path / "session.jsonl", tmp_path / "session.old"
    append_lines(live, recs[:10])
    append_partial(live, dumps(recs[10])[:50])
    s = Shipper(tmp_path, store, torn_after=60)
    s.checkpoints.lock()                                  # what run() does first
    try:
        s.ship_pass()
        os.rename(live, old)
        s.ship_pass()
        assert s.stats.dead_lettered == 0 and len(s.files) == 1   # recent: still open
        t = os.stat(old).st_mtime
        os.utime(old, (t - 120, t - 120))                  # no write for 2 minutes
        s.ship_pass()
        assert s.stats.dead_lettered == 1 and s.files == {}
    finally:
        s.tailer.close()
        s.checkpoints.unlock()
    dl = dead_letters(tmp_path)[-1]
    assert dl["reason"].startswith("incomplete last line") and dl["line"] == dumps(recs[10])[:50]
    assert count_tag(store, tag) == 10


def test_once_run_settles_a_rotated_away_fragment_before_it_exits(tmp_path, store):
    # Nobody reads the handle after a --once run ends, so its fragment is recorded, not dropped.
    tag = "rot-once"
    recs = list(records(6, seed=43, tag=tag))
    live = tmp_path / "session.jsonl"
    append_lines(live, recs[:5])
    append_partial(live, dumps(recs[5])[:40])
    renamed = []

    def rotate(shipper):                                  # rotated right after the first batch
        if not renamed:
            os.rename(live, tmp_path / "session.old")
            renamed.append(True)

    s = Shipper(tmp_path, store, torn_after=3600, on_batch=rotate)
    s.run(once=True)
    assert renamed and s.stats.shipped == 5 and s.stats.dead_lettered == 1 and s.files == {}
    assert dead_letters(tmp_path)[-1]["line"] == dumps(recs[5])[:40]
    assert count_tag(store, tag) == 5


def test_truncated_file_restarts_from_zero(tmp_path, store):
    tag = "trunc"
    recs = list(records(30, seed=5, tag=tag))
    path = tmp_path / "s.jsonl"
    append_lines(path, recs[:20])
    ship_once(tmp_path, store)
    with open(path, "w", encoding="utf-8"):   # copytruncate
        pass
    append_lines(path, recs[20:30])
    s = ship_once(tmp_path, store)
    assert s.stats.shipped == 10
    assert count_tag(store, tag) == 30


def test_new_file_on_a_reused_inode_is_read_from_zero(tmp_path, store):
    tag = "inode"
    recs = list(records(40, seed=6, tag=tag))
    path = tmp_path / "s.jsonl"
    append_lines(path, recs[:30])
    ship_once(tmp_path, store)
    # fake inode reuse: same inode, different first line, longer than the old offset
    with open(path, "r+", encoding="utf-8") as fh:
        fh.seek(0)
        fh.write("".join(dumps(r) + "\n" for r in recs[30:40] * 1))
        fh.write("".join(dumps(r) + "\n" for r in recs[:30]))
    s = ship_once(tmp_path, store)
    assert s.stats.shipped == 10  # the 10 new ones; the old 30 are duplicates
    assert count_tag(store, tag) == 40


def test_checkpoint_file_is_valid_json_and_second_shipper_is_refused(tmp_path, store):
    append_lines(tmp_path / "s.jsonl", records(5, seed=8, tag="lock"))
    stop = threading.Event()
    first = Shipper(tmp_path, store, poll_interval=0.05, stop_event=stop)
    t = threading.Thread(target=first.run, daemon=True)
    t.start()
    try:
        wait_until(lambda: first.stats.shipped == 5, 30, what="shipped")
        with pytest.raises(ShipperError, match="another shipper"):
            Shipper(tmp_path, store).run(once=True)
    finally:
        stop.set()
        t.join(10)
    data = json.loads((tmp_path / ".seekwatch-ship" / "checkpoints.json").read_text())
    assert data["version"] == 1 and len(data["files"]) == 1
    assert not (tmp_path / ".seekwatch-ship" / "checkpoints.json.tmp").exists()


@pytest.mark.parametrize("args", [
    ["ship", "--logs", "/nonexistent-dir", "--url", "http://127.0.0.1:9", "--once"],
    ["ship", "--logs", ".", "--url", "http://127.0.0.1:9", "--batch-size", "0"],
    ["ship", "--logs", ".", "--url", "nope"],
    ["ship", "--url", "http://x"],
])
def test_ship_bad_flags_exit_2_one_line(args):
    proc = subprocess.run([sys.executable, "-m", "seekwatch", *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_resend_after_rollover_does_not_duplicate(tmp_path, store):
    # A crash after the engine acknowledged but before the checkpoint, then a rollover: the
    # re-sent ids are new to the new write index, so only the ids check prevents doubles.
    tag = "rollover"
    append_lines(tmp_path / "s.jsonl", records(25, seed=12, tag=tag))
    ship_once(tmp_path, store)
    store.request("POST", "/seekwatch-sessions/_rollover")
    (tmp_path / ".seekwatch-ship" / "checkpoints.json").unlink()  # as if the checkpoint never landed
    s = ship_once(tmp_path, store)
    assert s.stats.shipped == 0 and s.stats.duplicates == 25
    assert count_tag(store, tag) == 25


def test_torn_tail_of_a_file_the_writer_left_is_dead_lettered(tmp_path, store):
    # The node was SIGKILLed mid-line in .0001 and, restarted, writes .0002 (it never
    # appends to a file a killed process may have torn).
    tag = "torn"
    recs = list(records(20, seed=13, tag=tag))
    old = tmp_path / "session-2026-11-28.0001.jsonl"
    new = tmp_path / "session-2026-11-28.0002.jsonl"
    append_lines(old, recs[:10])
    append_partial(old, dumps(recs[10])[:50])
    append_lines(new, recs[11:])
    s = ship_once(tmp_path, store, torn_after=3600)      # too recent: left waiting
    assert s.stats.shipped == 19 and s.stats.dead_lettered == 0 and s.partial_bytes() == {str(old): 50}
    t = os.stat(new).st_mtime
    os.utime(old, (t - 120, t - 120))                     # the old file has been idle for 2 minutes
    s = ship_once(tmp_path, store, torn_after=60)
    assert s.stats.dead_lettered == 1 and s.partial_bytes() == {}
    assert dead_letters(tmp_path)[-1]["reason"].startswith("torn last line")
    assert dead_letters(tmp_path)[-1]["line"] == dumps(recs[10])[:50]
    assert count_tag(store, tag) == 19
