"""The local JSON-lines source: whole lines only, bad lines set aside, incremental, rotation-safe."""
from __future__ import annotations

import datetime as dt
import json
import os

import pytest

from dashboards.data.base import Window
from dashboards.data.jsonl import JsonlSource

from .gen import generate

END = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)
ALL = Window(END - dt.timedelta(days=30), END + dt.timedelta(days=1))


def lines(recs):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)


def turns(recs):
    return [r for r in recs if r["event"]["dataset"] == "seekwatch.session"]


def test_fixture_logs_set_aside_bad_lines(fixture_logs, fixture_records):
    src = JsonlSource(fixture_logs)
    src.refresh()
    h = src.health()
    assert h["turns"] == len(turns(fixture_records))
    assert h["feedback"] == len(fixture_records) - h["turns"]
    assert h["set_aside"] == 1 and "broken" in h["set_aside_samples"][0]  # the garbage line
    assert h["pending_partial_lines"] == 1                                 # the torn last line


def test_incremental_and_torn_line_completed_later(tmp_path):
    recs = list(generate(60, END, seed=3, feedback_ratio=0))
    f = tmp_path / "seekwatch-2026-11-29.0000.jsonl"
    f.write_text(lines(recs[:40]), "utf-8")
    src = JsonlSource(tmp_path)
    assert src.refresh() and src.kpis(ALL).requests == 40
    assert not src.refresh()  # nothing new: nothing re-read
    tail = json.dumps(recs[40], ensure_ascii=False) + "\n"
    with open(f, "a", encoding="utf-8") as fh:
        fh.write(tail[:25])  # the writer is mid-line
    src.refresh()
    assert src.kpis(ALL).requests == 40 and src.health()["pending_partial_lines"] == 1
    with open(f, "a", encoding="utf-8") as fh:
        fh.write(tail[25:] + lines(recs[41:]))
    src.refresh()
    assert src.kpis(ALL).requests == 60 and src.health()["pending_partial_lines"] == 0
    assert src.health()["set_aside"] == 0
    # the text is read back from disk by offset
    conv = src.conversation(recs[45]["session_id"])
    assert recs[45]["request_id"] in set(conv["request_id"])
    assert dict(zip(conv["request_id"], conv["prompt"]))[recs[45]["request_id"]] == recs[45]["prompt"]


def test_crash_partial_line_then_more_writes(tmp_path):
    recs = list(generate(30, END, seed=4, feedback_ratio=0))
    f = tmp_path / "a.jsonl"
    f.write_text(lines(recs[:10]) + json.dumps(recs[10])[:50] + lines(recs[11:]), "utf-8")
    src = JsonlSource(tmp_path)
    src.refresh()
    # the torn record and the one glued to it form one bad line: set aside, everything else kept
    assert src.kpis(ALL).requests == 28 and src.health()["set_aside"] == 1


def test_rotation_by_rename_is_not_read_twice(tmp_path):
    recs = list(generate(50, END, seed=5, feedback_ratio=0))
    live = tmp_path / "seekwatch.jsonl"
    live.write_text(lines(recs[:30]), "utf-8")
    src = JsonlSource(tmp_path)
    src.refresh()
    os.rename(live, tmp_path / "seekwatch.jsonl.1")
    live.write_text(lines(recs[30:]), "utf-8")
    src.refresh()
    assert src.kpis(ALL).requests == 50
    # a copy of an old file (copytruncate-style) adds no duplicates
    (tmp_path / "copy.jsonl").write_text(lines(recs[:30]), "utf-8")
    src.refresh()
    assert src.kpis(ALL).requests == 50


def test_feedback_down_makes_turn_incomplete(tmp_path):
    recs = turns(list(generate(10, END, seed=6, feedback_ratio=0)))
    for r in recs:
        r["status"] = "completed"
    fb = {"@timestamp": recs[0]["@timestamp"], "ecs": {"version": "8.11.0"}, "event": {"dataset": "seekwatch.feedback"},
          "service": {"name": "n"}, "host": {"name": "h"}, "feedback_id": "fb-1", "request_id": recs[3]["request_id"],
          "session_id": recs[3]["session_id"], "rating": "down"}
    (tmp_path / "x.jsonl").write_text(lines(recs + [fb]), "utf-8")
    src = JsonlSource(tmp_path)
    src.refresh()
    k = src.kpis(ALL)
    assert (k.requests, k.chat_turns, k.completed, k.rated_down) == (10, 10, 9, 1)


def test_parse_cache_roundtrip(fixture_logs, fixture_records, tmp_path):
    cache = tmp_path / "cache"
    first = JsonlSource(fixture_logs, cache_dir=cache, settle_s=0, cache_async=False)
    first.refresh()
    assert list(cache.glob("*.turns.arrow")), "settled files are cached"
    again = JsonlSource(fixture_logs, cache_dir=cache, settle_s=0, cache_async=False)
    again.refresh()
    assert again._cached  # read back, not parsed
    for w in (ALL, Window(END - dt.timedelta(hours=24), END)):
        assert again.kpis(w) == first.kpis(w)
    assert again.health()["set_aside"] == first.health()["set_aside"] == 1
    sid = first.slowest(ALL, "latency_ms", 1)["session_id"][0]
    assert list(again.conversation(sid)["prompt"]) == list(first.conversation(sid)["prompt"])


def test_reads_the_nodes_own_records(tmp_path):
    """Records built by the node's own builders (inference.session_record) read back right."""
    import inference.session_record as sr
    at = END - dt.timedelta(minutes=30)
    recs = [sr.build_session_record(session_id="conv-1", request_id=f"chatcmpl-node{i}", turn_index=i,
                                    prompt="我的手机13812345678", response="好的", model_version="deepseek-7b-v1.5",
                                    duration_s=1.5 + i, ttft_s=0.2, status="completed" if i < 2 else "truncated",
                                    input_tokens=100, output_tokens=50, cost_usd=0.001, ended_at=at + dt.timedelta(minutes=i))
            for i in range(3)]
    recs.append(sr.build_feedback_record(rating="down", request_id="chatcmpl-node1", session_id="conv-1",
                                         at=at + dt.timedelta(minutes=5)))
    (tmp_path / "seekwatch-2026-11-29.0000.jsonl").write_text(lines(recs), "utf-8")
    src = JsonlSource(tmp_path)
    src.refresh()
    k = src.kpis(Window(END - dt.timedelta(hours=1), END))
    assert (k.requests, k.completed, k.rated_down, k.sessions, k.completed_dialogues) == (3, 1, 1, 1, 0)
    assert k.dialogues == 1       # ended 5 min after its last (truncated) turn: not completed
    assert k.e2e_p50 == pytest.approx(2500.0) and k.ttft_p50 == pytest.approx(200.0)
    assert src.health()["set_aside"] == 0


@pytest.mark.parametrize("rotation", ["renamed", "deleted"])
def test_a_file_rotated_away_is_read_to_its_end(tmp_path, rotation):
    """Lines appended after a refresh, then the file renamed to a name that is not a log
    file's (logrotate's ``dateext``) or deleted before the next refresh: they are still
    counted, read through the handle kept, as are lines its writer appends after the rename;
    once its writer has left it the file is let go."""
    recs = turns(list(generate(60, END, seed=8, feedback_ratio=0)))
    live = tmp_path / "seekwatch.jsonl"
    with open(live, "a", encoding="utf-8") as writer:
        writer.write(lines(recs[:20]))
        writer.flush()
        src = JsonlSource(tmp_path)
        src.refresh()
        assert src.kpis(ALL).requests == 20
        writer.write(lines(recs[20:35]))
        writer.flush()
        if rotation == "renamed":
            os.rename(live, tmp_path / "seekwatch.jsonl-20261204")
        else:
            os.unlink(live)
        (tmp_path / "seekwatch.jsonl").write_text(lines(recs[35:50]), "utf-8")
        src.refresh()
        assert src.kpis(ALL).requests == 50
        writer.write(lines(recs[50:]))  # its writer has not reopened its path yet
        writer.flush()
    src.refresh()
    k = src.kpis(ALL)
    assert k.requests == len({r["request_id"] for r in recs}) == 60
    assert k.cost_usd == pytest.approx(sum(r["cost_usd"] for r in recs), rel=1e-9)
    (gone,) = src._tailer.vanished()
    os.utime(gone.fh.fileno(), (0, 0))  # its writer left it long ago
    src.refresh()
    assert src._tailer.vanished() == [] and src.kpis(ALL).requests == 60
