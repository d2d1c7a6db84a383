"""Kibana saved searches: each one's query DSL (dashboards/kibana/queries.json) run against
the real engine returns exactly the records the search means; the NDJSON and docs agree."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from monitor.logstore.setup import template_field_paths
from tests.logstore.conftest import run_ship, tag_query
from tests.logstore.gen import append_lines, feedback_record, session_record

REPO = Path(__file__).resolve().parents[2]
QUERIES = json.loads((REPO / "dashboards" / "kibana" / "queries.json").read_text())
NDJSON = [json.loads(l) for l in (REPO / "dashboards" / "kibana" / "saved-objects.ndjson").read_text().splitlines() if l.strip()]
TAG = "kibana"

EXPECT = {
    "seekwatch-slow-turns": lambda r: r["event"]["dataset"] == "seekwatch.session"
        and ((r.get("ttft_ms") or 0) > 500 or r["latency_ms"] > 5000),
    "seekwatch-failed-turns": lambda r: r["event"]["dataset"] == "seekwatch.session" and r["status"] != "completed"
        and r.get("request_kind", "chat") == "chat",
    "seekwatch-background-requests": lambda r: r["event"]["dataset"] == "seekwatch.session"
        and r.get("request_kind") in ("title", "summary"),
    "seekwatch-negative-feedback": lambda r: r["event"]["dataset"] == "seekwatch.feedback" and r["rating"] == "down",
    "seekwatch-pii-hits": lambda r: r.get("pii", {}).get("total", 0) > 0 or bool(r.get("pii", {}).get("redactions")),
    "seekwatch-conversation": lambda r: r.get("session_id") == "sess-kibana000007",
}


def doc_id(r: dict) -> str:
    return r.get("feedback_id") or r["request_id"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, log_store_url):
    rng = random.Random(99)
    recs = []
    for i in range(400):
        r = session_record(i, rng, tag=TAG, latency_ms=rng.choice([300, 900, 2500, 7000]))
        # NextChat's background requests, a refused unreadable request, and records written
        # before request_kind existed (no field: read as chat)
        kind = "title" if i % 7 == 3 else "summary" if i % 11 == 5 else "other" if i % 29 == 1 else "chat"
        if i % 9 != 4:
            r["request_kind"] = kind
        if i % 13 == 0:
            r["pii"] = {"redactions": {"phone": 1}, "total": 1}
            r["prompt"] = "我的电话是 [PHONE]"
        recs.append(r)
        if i % 4 == 0:
            fb = feedback_record(i, r["request_id"], r["session_id"], "down" if i % 8 == 0 else "up",
                                 comment="回答不对" if i % 8 == 0 else "")
            fb["feedback_id"] = f"fb-{TAG}{i:06d}"
            fb["host"]["name"] = f"node-{TAG}"
            if i % 24 == 0:
                fb["pii"] = {"redactions": {"email": 1}, "total": 1}
            recs.append(fb)
    logs = tmp_path_factory.mktemp("kibana-logs")
    append_lines(logs / "session.jsonl", recs)
    assert run_ship(logs, log_store_url)["shipped"] == len(recs)
    return recs


def dsl(search: dict, params: dict) -> dict:
    text = json.dumps(search["query"])
    for k, v in params.items():
        text = text.replace("{{%s}}" % k, v)
    return json.loads(text)


@pytest.mark.parametrize("search", QUERIES["searches"], ids=lambda s: s["id"])
def test_saved_search_dsl_returns_what_it_means(search, dataset, store):
    query = {"bool": {"filter": [tag_query(TAG), dsl(search, {"session_id": "sess-kibana000007"})]}}
    store.refresh()
    res = store.search(QUERIES["index"], {"query": query, "size": 1000, "sort": search["sort"],
                                          "_source": ["request_id", "feedback_id"]})
    got = [h["_source"].get("feedback_id") or h["_source"]["request_id"] for h in res["hits"]["hits"]]
    want = [doc_id(r) for r in dataset if EXPECT[search["id"]](r)]
    assert want, "the data set must exercise every search"
    assert sorted(got) == sorted(want)
    assert res["hits"]["total"]["value"] == len(want)


@pytest.mark.parametrize("vis", QUERIES["visualizations"], ids=lambda v: v["id"])
def test_visualisation_by_kind_matches_a_recount(vis, dataset, store):
    """The table's figures (requests, tokens, cost per request_kind) are the raw records'."""
    store.refresh()
    res = store.search(QUERIES["index"], {"query": {"bool": {"filter": [tag_query(TAG), vis["query"]]}},
                                          "size": 0, "aggs": vis["aggs"]})
    got = {b["key"]: (b["doc_count"], b["input_tokens"]["value"], b["output_tokens"]["value"], b["cost_usd"]["value"])
           for b in res["aggregations"]["by_kind"]["buckets"]}
    want: dict[str, list] = {}
    for r in dataset:
        if r["event"]["dataset"] != "seekwatch.session":
            continue
        w = want.setdefault(r.get("request_kind", "__missing__"), [0, 0, 0, 0.0])
        w[0] += 1
        w[1] += r["gen_ai"]["usage"]["input_tokens"]
        w[2] += r["gen_ai"]["usage"]["output_tokens"]
        w[3] += r["cost_usd"]
    assert set(want) == {"chat", "title", "summary", "other", "__missing__"}
    assert {k: g[:3] for k, g in got.items()} == {k: tuple(w[:3]) for k, w in want.items()}  # counts: exact
    for k, w in want.items():  # a sum of doubles in another order: equal to rounding
        assert got[k][3] == pytest.approx(w[3], rel=1e-9)


def test_conversation_is_in_order(dataset, store):
    search = next(s for s in QUERIES["searches"] if s["id"] == "seekwatch-conversation")
    res = store.search(QUERIES["index"], {"query": dsl(search, {"session_id": "sess-kibana000007"}),
                                          "sort": search["sort"], "size": 100})
    stamps = [h["_source"]["@timestamp"] for h in res["hits"]["hits"]]
    assert stamps == sorted(stamps) and len(stamps) >= 5


def test_ndjson_saved_objects_match_queries_and_docs():
    by_id = {o["id"]: o for o in NDJSON}
    assert by_id["seekwatch-logs-data-view"]["attributes"]["title"] == QUERIES["index"]
    docs = (REPO / "docs" / "kibana.md").read_text()
    for s in QUERIES["searches"]:
        obj = by_id[s["id"]]
        assert obj["type"] == "search" and obj["attributes"]["title"] == s["title"]
        source = json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        assert source["query"]["language"] == "kuery"
        kql = s["kql"].replace("{{session_id}}", "sess-000000")
        assert source["query"]["query"] == kql
        assert kql in docs, kql
        assert set(s["columns"]) <= template_field_paths(), s["columns"]
    dash = by_id["seekwatch-session-logs"]
    panels = json.loads(dash["attributes"]["panelsJSON"])
    refs = {r["name"]: r["id"] for r in dash["references"]}
    assert len(panels) == len(QUERIES["searches"]) + len(QUERIES["visualizations"])
    for v in QUERIES["visualizations"]:
        obj = by_id[v["id"]]
        assert obj["type"] == "visualization" and obj["attributes"]["title"] == v["title"]
        source = json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        assert source["query"]["query"] == v["kql"] and v["kql"] in docs
        state = json.loads(obj["attributes"]["visState"])
        fields = {a["params"].get("field") for a in state["aggs"]} - {None}
        assert fields <= template_field_paths() and "request_kind" in fields
        terms = next(a for a in state["aggs"] if a["type"] == "terms")
        assert terms["params"]["missingBucket"] and terms["params"]["missingBucketLabel"] == v["missing_label"]
    for p in panels:
        assert refs[f"{p['panelIndex']}:{p['panelRefName']}"] in by_id
    for o in NDJSON:
        for r in o.get("references", []):
            assert r["id"] in by_id, r
