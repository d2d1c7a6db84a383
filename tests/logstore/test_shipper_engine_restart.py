"""The engine stopped and restarted while the shipper runs: it waits, resumes, and the index
ends with exactly 10,000 documents, none lost, none doubled. Uses its own engine (same data
directory and port across the restart), not the shared session engine."""
from __future__ import annotations

import json
import time

import pytest

from contracts.logstore import StoreClient
from monitor.logstore.launcher import LogStoreServer
from monitor.logstore.setup import install
from tests.fixtures.log_store import ensure_log_store_built
from tests.logstore.conftest import checkpoint_offsets, count_tag, start_ship, tag_query, wait_until
from tests.logstore.gen import append_lines, records

pytestmark = pytest.mark.slow
N = 10_000
TAG = "restart"


def test_engine_restart_midway_loses_and_doubles_nothing(tmp_path):
    ensure_log_store_built()
    engine = LogStoreServer(tmp_path / "engine", port=0, heap="384m", max_heap="512m")
    url = engine.start()
    port = int(url.rsplit(":", 1)[1])
    logs = tmp_path / "logs"
    logs.mkdir()
    state = logs / ".seekwatch-ship"
    shipper = None
    try:
        with StoreClient(url) as client:
            install(client)
        recs = list(records(N, seed=23, tag=TAG))
        append_lines(logs / "session.jsonl", recs[:6000])
        first_bytes = (logs / "session.jsonl").stat().st_size
        shipper = start_ship(logs, url, "--batch-size", "250", "--poll", "0.1", "--max-backoff", "1",
                             output=tmp_path / "ship.err", pipe_stdout=True)
        wait_until(lambda: checkpoint_offsets(state) >= 0.3 * first_bytes, timeout=60, interval=0.01,
                   what="30% shipped")
        engine.stop()                       # midway: batches are in flight
        append_lines(logs / "session.jsonl", recs[6000:])  # the node keeps writing meanwhile
        time.sleep(2.0)                     # the shipper is now retrying against a closed port
        assert shipper.poll() is None, shipper.tail()
        stalled_at = checkpoint_offsets(state)
        engine.port = port                  # same address: the shipper was given one URL
        assert engine.start() == url
        total = (logs / "session.jsonl").stat().st_size
        wait_until(lambda: checkpoint_offsets(state) >= total, timeout=120, interval=0.1, what="catch-up")
        assert shipper.stop() == 0, shipper.tail()   # SIGTERM: a clean stop with its summary
        out = shipper.proc.stdout.read().decode()
        err = (tmp_path / "ship.err").read_text()
        summary = json.loads(out.strip().splitlines()[-1])
        assert stalled_at < total
        assert summary["outages"] >= 1, (summary, err)
        assert summary["dead_lettered"] == 0, err
        assert "log store unreachable" in err and "resuming" in err
        with StoreClient(url) as client:
            assert count_tag(client, TAG) == N
            body = {"size": 0, "query": tag_query(TAG),
                    "aggs": {"dups": {"terms": {"field": "request_id", "min_doc_count": 2, "size": 10}}}}
            assert client.search("seekwatch-sessions", body)["aggregations"]["dups"]["buckets"] == []
    finally:
        if shipper is not None:
            shipper.kill()
        engine.stop()
