"""The search-engine source and the JSON-lines source give the same KPIs on the same data.

The fixture records are indexed into the suite's real OpenSearch (``log_store_url``), tagged
with a unique ``host.name`` and request-id prefix (other tests share the engine); the engine
source filters on the tag. Counts, sums and dialogue counts must be equal, and equal to the
recount from the raw records (``expected``, by contracts.signals); percentiles within 5 % of
numpy's on a small window (read back exactly) and on one over EXACT_MAX samples (HDR).
"""
from __future__ import annotations

import copy
import datetime as dt
import json
import uuid

import numpy as np
import pytest

from dashboards.data.base import Window
from dashboards.data.jsonl import JsonlSource

from .conftest import END
from .gen import write_logs

W24 = Window(END - dt.timedelta(hours=24), END)


@pytest.fixture(scope="module")
def tagged(fixture_records, tmp_path_factory):
    tag = uuid.uuid4().hex[:10]
    recs = copy.deepcopy(fixture_records)
    for r in recs:
        r["host"]["name"] = f"dash-{tag}"
        if r.get("request_id"):
            r["request_id"] = r["request_id"].replace("chatcmpl-", f"chatcmpl-d{tag}")
        if r.get("feedback_id"):
            r["feedback_id"] = f"fb-d{tag}{r['feedback_id'][3:]}"
    d = tmp_path_factory.mktemp("engine-logs")
    write_logs(d, recs, per_file=100000)
    return tag, recs, d


@pytest.fixture(scope="module")
def sources(log_store_url, tagged):
    from contracts.logstore import FEEDBACK_STREAM, SESSION_STREAM, StoreClient

    from dashboards.data.logstore import LogStoreSource

    tag, recs, d = tagged
    lines = []
    for r in recs:
        fb = r["event"]["dataset"] == "seekwatch.feedback"
        lines.append(json.dumps({"create": {"_index": FEEDBACK_STREAM if fb else SESSION_STREAM,
                                            "_id": r["feedback_id"] if fb else r["request_id"]}}))
        lines.append(json.dumps(r, ensure_ascii=False))
    with StoreClient(log_store_url) as c:
        resp = c.bulk(("\n".join(lines) + "\n").encode(), refresh="true")
        assert not resp.get("errors"), [i for i in resp["items"] if "error" in next(iter(i.values()))][:3]
    j = JsonlSource(d)
    j.refresh()
    return j, LogStoreSource(log_store_url, where={"host.name": f"dash-{tag}"})


def test_same_kpis(sources, expected):
    j, e = sources
    for w in (W24, W24.previous(), W24.today()):
        a, b = j.kpis(w), e.kpis(w)
        for f in ("requests", "chat_turns", "completed", "sessions", "dialogues", "completed_dialogues",
                  "input_tokens", "output_tokens", "rated_up", "rated_down", "statuses"):
            assert getattr(a, f) == getattr(b, f), (w, f)
        assert a.cost_usd == pytest.approx(b.cost_usd, rel=1e-9)
        assert a.busy_s == pytest.approx(b.busy_s, rel=1e-9)
        df = j._window(w)
        for f, col in (("ttft", "ttft_ms"), ("e2e", "latency_ms")):
            vals = df[col].dropna().to_numpy(dtype="float64")
            for q, name in ((50, "p50"), (95, "p95"), (99, "p99")):
                exact = float(np.percentile(vals, q))
                assert getattr(a, f"{f}_{name}") == pytest.approx(exact, rel=1e-9)
                assert getattr(b, f"{f}_{name}") == pytest.approx(exact, rel=0.05), (w, f, name)
    k = e.kpis(W24)
    assert (k.chat_turns, k.completed, k.dialogues, k.completed_dialogues) == \
           (expected.chat_turns, expected.completed, expected.dialogues, expected.completed_dialogues)


def test_percentiles_of_a_large_window_within_5_percent(log_store_url):
    """Above EXACT_MAX samples the engine's HDR histogram answers: still within 5 % of numpy."""
    from contracts.logstore import SESSION_STREAM, StoreClient

    from dashboards.data.logstore import EXACT_MAX, LogStoreSource

    from .gen import generate

    tag = uuid.uuid4().hex[:10]
    recs = [r for r in generate(EXACT_MAX + 2000, END, span_s=6 * 3600, seed=23, feedback_ratio=0)]
    lines = []
    for r in recs:
        r["host"]["name"] = f"big-{tag}"
        r["request_id"] = r["request_id"].replace("chatcmpl-", f"chatcmpl-b{tag}")
        lines += [json.dumps({"create": {"_index": SESSION_STREAM, "_id": r["request_id"]}}), json.dumps(r, ensure_ascii=False)]
    with StoreClient(log_store_url) as c:
        step = 4000   # lines: 2,000 records a request, so a busy machine stays within the client's timeout
        for i in range(0, len(lines), step):
            last = i + step >= len(lines)
            assert not c.bulk(("\n".join(lines[i:i + step]) + "\n").encode(),
                              refresh="true" if last else "false").get("errors")
    e = LogStoreSource(log_store_url, where={"host.name": f"big-{tag}"})
    w = Window(END - dt.timedelta(hours=7), END + dt.timedelta(hours=7))   # every record
    k = e.kpis(w)
    assert k.requests == len(recs) > EXACT_MAX
    for f, col in (("ttft", "ttft_ms"), ("e2e", "latency_ms")):
        vals = np.array([r[col] for r in recs if r[col] is not None], dtype="float64")
        for q, name in ((50, "p50"), (95, "p95"), (99, "p99")):
            assert getattr(k, f"{f}_{name}") == pytest.approx(float(np.percentile(vals, q)), rel=0.05), (f, name)


def test_same_breakdowns(sources):
    j, e = sources
    sj, se = j.series(W24, 3600), e.series(W24, 3600)
    assert list(sj["time"]) == list(se["time"])
    for c in ("requests", "chat_turns", "completed", "input_tokens", "output_tokens"):
        assert list(sj[c]) == list(se[c]), c
    qj, qe = j.quality_by_model(W24), e.quality_by_model(W24)
    assert qj.to_dict("records") == qe.to_dict("records")
    assert j.completion_by_turn(W24).to_dict("records") == e.completion_by_turn(W24).to_dict("records")
    kj, ke = j.cost_by_kind(W24), e.cost_by_kind(W24)
    assert list(kj["request_kind"]) == list(ke["request_kind"]) == ["chat", "title"]
    for c in ("requests", "input_tokens", "output_tokens"):
        assert list(kj[c]) == list(ke[c]), c
    assert list(kj["cost_usd"]) == pytest.approx(list(ke["cost_usd"]), rel=1e-9)
    for f in ("ttft_ms", "latency_ms"):
        assert list(j.histogram(W24, f)["count"]) == list(e.histogram(W24, f)["count"]), f
        assert list(j.slowest(W24, f, 5)["request_id"]) == list(e.slowest(W24, f, 5)["request_id"])
    assert j.models(W24) == e.models(W24)
    sid = j.slowest(W24, "latency_ms", 1)["session_id"][0]
    assert list(j.conversation(sid)["request_id"]) == list(e.conversation(sid)["request_id"])
    assert sorted(j.search_turns(W24, session=sid)["request_id"]) == sorted(e.search_turns(W24, session=sid)["request_id"])


def test_engine_uses_aggregations_only(sources):
    j, e = sources
    before = e.requests_made
    k = e.kpis(W24)
    # one aggregation request (+ the two composite feedback look-ups, cached for a few seconds),
    # the conversations' keys and their thumbs-down times (one page each), the latencies of a
    # window of at most EXACT_MAX turns (exact percentiles)
    assert e.requests_made - before <= 6 and k.requests > 0
    # the Overview's bundle: one request for three windows and the series
    e._fb_cache.clear()
    before = e.requests_made
    ek, ep, et, ey, es = e.overview(W24, 3600)
    # the thumbs-down ids (one page) + one aggregation, then for each of the two periods the
    # conversations' keys, their thumbs-down times and the latencies (exact percentiles)
    assert e.requests_made - before == 8
    jk, jp, jt, jy, js = j.overview(W24, 3600)
    assert (jt.requests, jt.cost_usd) == (et.requests, pytest.approx(et.cost_usd))
    assert (jy.requests, jy.cost_usd) == (ey.requests, pytest.approx(ey.cost_usd))
    for a, b in ((jk, ek), (jp, ep)):
        assert (a.requests, a.chat_turns, a.completed, a.sessions, a.dialogues, a.completed_dialogues, a.output_tokens) == \
               (b.requests, b.chat_turns, b.completed, b.sessions, b.dialogues, b.completed_dialogues, b.output_tokens)
        for f in ("ttft_p50", "ttft_p99", "e2e_p95"):
            assert getattr(a, f) == pytest.approx(getattr(b, f)), f
        assert a.cost_usd == pytest.approx(b.cost_usd)
    assert list(js["requests"]) == list(es["requests"]) and list(js["completed"]) == list(es["completed"])
    for c in ("ttft_p50", "ttft_p99", "e2e_p99"):
        assert np.allclose(js[c].to_numpy(dtype=float), es[c].to_numpy(dtype=float), equal_nan=True), c


def test_overview_page_from_engine(sources, tagged, log_store_url, dash_env, expected):
    from streamlit.testing.v1 import AppTest

    from .test_pages import VIEWS, metrics

    dash_env.setenv("SEEKWATCH_DASHBOARD_URL", log_store_url)
    dash_env.setenv("SEEKWATCH_DASHBOARD_HOST_NAME", f"dash-{tagged[0]}")
    at = AppTest.from_file(str(VIEWS / "overview.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    m = metrics(at)
    assert m["请求数 Requests"][0] == f"{expected.requests:,}"
    assert m["完成率 Completion rate"][0] == f"{expected.completion_rate * 100:.1f} %"
    assert m["会话数 Sessions"][0] == f"{expected.sessions:,}"


@pytest.mark.parametrize("page", ["latency", "quality", "cost", "alerts", "sessions"])
def test_every_page_renders_from_engine(page, sources, tagged, log_store_url, dash_env, expected):
    from streamlit.testing.v1 import AppTest

    from .test_pages import VIEWS

    dash_env.setenv("SEEKWATCH_DASHBOARD_URL", log_store_url)
    dash_env.setenv("SEEKWATCH_DASHBOARD_HOST_NAME", f"dash-{tagged[0]}")
    at = AppTest.from_file(str(VIEWS / f"{page}.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    if page == "quality":
        assert {m.label: m.value for m in at.metric}["轮次完成率 Turn completion"] == f"{expected.completion_rate * 100:.1f} %"
    if page == "sessions":
        assert len(at.dataframe[0].value) == 200  # newest first, capped: never all documents
