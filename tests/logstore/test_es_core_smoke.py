"""Smoke suite against a real Elasticsearch 8.19, started core-only in one JVM
(search-engine/elasticsearch/: only the server jar and the netty4 transport are on Maven
Central, so no ingest processors, no ILM, no analysis-common). What it shows: the adapter
detects it, es-setup degrades with plain warnings, and the shipper's Elasticsearch path —
bulk `create` with ids into data streams created on write, 409 on re-send, per-item
handling — loses and doubles nothing; percentiles and the Kibana searches' DSL agree."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contracts.logstore import StoreClient
from monitor.logstore.launcher import LogStoreServer
from tests.fixtures.log_store import ensure_log_store_built
from tests.logstore.conftest import checkpoint_offsets, count_tag, run_ship, start_ship, tag_query, wait_until
from tests.logstore.gen import append_lines, feedback_record, records

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
QUERIES = json.loads((REPO / "dashboards" / "kibana" / "queries.json").read_text())
TAG = "escore"
N = 3000


@pytest.fixture(scope="module")
def es_core(tmp_path_factory):
    ensure_log_store_built()
    engine = LogStoreServer(tmp_path_factory.mktemp("es-core"), port=0, heap="384m", max_heap="512m",
                          flavor="elasticsearch-core")
    engine.start()
    try:
        yield engine.url
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def es(es_core):
    with StoreClient(es_core) as client:
        yield client


def test_adapter_detects_core_only_elasticsearch(es):
    info = es.info()
    assert info.distribution == "elasticsearch" and info.core_only and info.retention_api == "ilm"
    assert es.retention_supported() is False


def test_es_setup_degrades_with_plain_warnings_and_is_idempotent(es_core):
    runs = [subprocess.run([sys.executable, "-m", "seekwatch", "es-setup", "--url", es_core],
                           capture_output=True, text=True, timeout=60) for _ in range(2)]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
        assert "retention is NOT active" in proc.stderr and "core-only Elasticsearch" in proc.stderr
    assert "index template seekwatch-logs: created" in runs[0].stdout
    assert "index template seekwatch-logs: unchanged" in runs[1].stdout


@pytest.fixture(scope="module")
def shipped(es, es_core, tmp_path_factory):
    subprocess.run([sys.executable, "-m", "seekwatch", "es-setup", "--url", es_core],
                   capture_output=True, text=True, timeout=60, check=True)
    logs = tmp_path_factory.mktemp("es-core-logs")
    rng = random.Random(3)
    recs = list(records(N, seed=41, tag=TAG))
    for r in recs[::50]:  # some slow turns for the "slow turns" search
        r["latency_ms"] = 6000.0 + rng.random()
        r["event"]["duration"] = int(r["latency_ms"] * 1_000_000)
    fbs = []
    for i in range(0, N, 10):
        fb = feedback_record(i, recs[i]["request_id"], recs[i]["session_id"], "down" if i % 20 == 0 else "up")
        fb["feedback_id"] = f"fb-{TAG}{i:06d}"
        fb["host"]["name"] = f"node-{TAG}"
        fbs.append(fb)
    append_lines(logs / "session.jsonl", recs)
    append_lines(logs / "feedback.jsonl", fbs)
    total = sum(p.stat().st_size for p in logs.glob("*.jsonl"))
    proc = start_ship(logs, es_core, "--once", "--quiet", "--batch-size", "100", output=logs.parent / "ship.out")
    try:
        wait_until(lambda: checkpoint_offsets(logs / ".seekwatch-ship") >= 0.4 * total or proc.poll() is not None,
                   60, interval=0.01, what="40% shipped")
    finally:
        proc.kill()
    summary = run_ship(logs, es_core)
    return {"recs": recs, "fbs": fbs, "summary": summary, "logs": logs}


def test_shipper_into_elasticsearch_exactly_once_after_sigkill(shipped, es):
    assert shipped["summary"]["dead_lettered"] == 0
    assert count_tag(es, TAG, "seekwatch-sessions") == N
    assert count_tag(es, TAG, "seekwatch-feedback") == len(shipped["fbs"])
    dups = es.search("seekwatch-sessions", {"size": 0, "query": tag_query(TAG), "aggs": {
        "d": {"terms": {"field": "request_id", "min_doc_count": 2, "size": 5}}}})
    assert dups["aggregations"]["d"]["buckets"] == []
    again = run_ship(shipped["logs"], es.url)
    assert again["shipped"] == 0 and again["duplicates"] == 0


def test_percentiles_on_elasticsearch_match_numpy(shipped, es):
    lat = np.array([r["latency_ms"] for r in shipped["recs"]])
    body = {"size": 0, "query": tag_query(TAG),
            "aggs": {"p": {"percentiles": {"field": "latency_ms", "percents": [99]}}}}
    got = es.search("seekwatch-sessions", body)["aggregations"]["p"]["values"]["99.0"]
    lo, hi = np.percentile(lat, [98.5, 99.5])
    assert lo <= got <= hi


@pytest.mark.parametrize("search", [s for s in QUERIES["searches"] if s["id"] in
                                    ("seekwatch-slow-turns", "seekwatch-failed-turns", "seekwatch-negative-feedback")],
                         ids=lambda s: s["id"])
def test_kibana_search_dsl_runs_on_elasticsearch(search, shipped, es):
    query = {"bool": {"filter": [tag_query(TAG), search["query"]]}}
    res = es.search(QUERIES["index"], {"query": query, "size": 0, "track_total_hits": True})
    allrecs = shipped["recs"] + shipped["fbs"]
    expect = {
        "seekwatch-slow-turns": lambda r: r["event"]["dataset"] == "seekwatch.session"
            and ((r.get("ttft_ms") or 0) > 500 or r["latency_ms"] > 5000),
        "seekwatch-failed-turns": lambda r: r["event"]["dataset"] == "seekwatch.session" and r["status"] != "completed",
        "seekwatch-negative-feedback": lambda r: r["event"]["dataset"] == "seekwatch.feedback" and r["rating"] == "down",
    }[search["id"]]
    assert res["hits"]["total"]["value"] == sum(1 for r in allrecs if expect(r)) > 0
