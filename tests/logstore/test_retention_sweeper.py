"""``seekwatch es-retention`` on the real embedded OpenSearch, which has no ISM: old backing
indices go, recent records stay, the write index is rolled over and never deleted.

Each test uses its own data stream (``seekwatch-rt…``, matched by the seekwatch template),
so the shared engine's other streams are not touched.
"""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

from monitor.logstore.retention import enforce_retention


def _stream(store) -> str:
    name = f"seekwatch-rt{uuid.uuid4().hex[:8]}"
    store.create_data_stream(name)
    return name


def _write(store, stream: str, stamps: list[datetime]) -> None:
    lines = []
    for i, ts in enumerate(stamps):
        lines.append(json.dumps({"create": {"_index": stream}}))
        lines.append(json.dumps({"@timestamp": ts.isoformat().replace("+00:00", "Z"),
                                 "request_id": f"chatcmpl-rt{i}", "session_id": "s", "event": {"dataset": "seekwatch.session"}}))
    resp = store.bulk(("\n".join(lines) + "\n").encode(), refresh="true")
    assert not resp.get("errors"), resp


def test_expired_backing_index_is_deleted_and_recent_records_stay(store):
    stream = _stream(store)
    now = datetime.now(timezone.utc)
    _write(store, stream, [now - timedelta(days=200), now - timedelta(days=190)])  # all past 180 days
    # first run: the write index is young (created just now) — with rollover_age 0 it rolls over,
    # and the rolled index, newest record 190 days old, is deleted in the same run
    report = enforce_retention(store, days=180, streams=(stream,), rollover_age=timedelta(0))
    assert report.rolled_over == [stream]
    assert len(report.deleted) == 1
    left = store.backing_indices(stream)
    assert len(left) == 1 and left[0] not in report.deleted
    assert store.count(stream) == 0

    # a backing index holding one recent record among old ones is kept whole
    _write(store, stream, [now - timedelta(days=300), now - timedelta(days=10)])
    report = enforce_retention(store, days=180, streams=(stream,), rollover_age=timedelta(0))
    assert report.rolled_over == [stream] and report.deleted == []
    store.refresh(stream)
    assert store.count(stream) == 2
    # ...until that record ages out too
    later = enforce_retention(store, days=180, streams=(stream,), rollover_age=timedelta(days=1),
                              now=now + timedelta(days=171))
    assert later.rolled_over == [] and len(later.deleted) == 1
    store.refresh(stream)
    assert store.count(stream) == 0


def test_write_index_is_never_deleted_and_young_one_is_not_rolled(store):
    stream = _stream(store)
    _write(store, stream, [datetime.now(timezone.utc) - timedelta(days=400)])
    write = store.backing_indices(stream)[-1]
    report = enforce_retention(store, days=180, streams=(stream,))  # default: roll over after a day
    assert report.rolled_over == [] and report.deleted == [] and report.kept == [write]
    assert store.count(stream) == 1


def test_cli_dry_run_changes_nothing(store, log_store_url):
    stream = _stream(store)
    _write(store, stream, [datetime.now(timezone.utc) - timedelta(days=400)])
    store.request("POST", f"/{stream}/_rollover")
    before = store.backing_indices(stream)
    proc = subprocess.run([sys.executable, "-m", "seekwatch", "es-retention", "--url", log_store_url,
                           "--dry-run"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # the CLI looks at seekwatch's own streams only; run the library on ours with dry_run
    report = enforce_retention(store, days=180, streams=(stream,), dry_run=True)
    assert report.deleted == [before[0]]
    assert store.backing_indices(stream) == before
    assert "would delete" in "\n".join(report.lines(dry_run=True))


def test_cli_refuses_bad_days_in_one_line(log_store_url):
    proc = subprocess.run([sys.executable, "-m", "seekwatch", "es-retention", "--url", log_store_url,
                           "--retention-days", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--retention-days" in proc.stderr
