"""Retention, the node's side: a real ``seekwatch serve`` deletes session-log files older than
the default 180 days when it starts, keeps younger ones and never touches files that are not
its own.

``--log-retention-days`` shortens the period (below); the writer's daily check is
unit-tested with an injected clock in tests/instrumentation/test_session_log.py::
test_retention_at_start_and_daily; the engine side (ILM / ISM policy attached by
``es-setup``) is tested in tests/logstore/test_setup.py.
"""
from __future__ import annotations

import datetime as dt
import json

import httpx


def test_node_deletes_logs_older_than_180_days_at_start(node_factory, tmp_path):
    log_dir = tmp_path / "retention-log"
    log_dir.mkdir()
    today = dt.datetime.now(dt.timezone.utc).date()
    line = json.dumps({"event": {"dataset": "seekwatch.session"}, "request_id": "old"}) + "\n"
    old = log_dir / f"session-{today - dt.timedelta(days=200)}.0001.jsonl"
    just_over = log_dir / f"session-{today - dt.timedelta(days=181)}.0001.jsonl"
    kept = log_dir / f"session-{today - dt.timedelta(days=179)}.0001.jsonl"
    foreign = log_dir / "notes-2020-01-01.jsonl"
    for p in (old, just_over, kept, foreign):
        p.write_text(line)
    node = node_factory("--log-dir", str(log_dir))
    assert not old.exists() and not just_over.exists()
    assert kept.exists() and foreign.exists()
    r = httpx.post(node.base_url + "/v1/chat/completions", timeout=30,
                   json={"model": "deepseek-chat", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    node.stop()
    assert kept.exists() and any(p.name.startswith(f"session-{today}") for p in log_dir.iterdir())


def test_shortened_retention_flag_deletes_younger_files(node_factory, tmp_path):
    log_dir = tmp_path / "short-retention-log"
    log_dir.mkdir()
    today = dt.datetime.now(dt.timezone.utc).date()
    line = json.dumps({"event": {"dataset": "seekwatch.session"}, "request_id": "old"}) + "\n"
    week_old = log_dir / f"session-{today - dt.timedelta(days=8)}.0001.jsonl"
    yesterday = log_dir / f"session-{today - dt.timedelta(days=1)}.0001.jsonl"
    for p in (week_old, yesterday):
        p.write_text(line)
    node_factory("--log-dir", str(log_dir), "--log-retention-days", "7")
    assert not week_old.exists() and yesterday.exists()
