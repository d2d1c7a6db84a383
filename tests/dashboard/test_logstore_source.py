"""The search-engine source and the JSON-lines source give the same KPIs on the same data.

The fixture records are indexed into the suite's real OpenSearch (``log_store_url``), tagged
with a unique ``host.name`` and request-id prefix (other tests share the engine); the engine
source filters on the tag. Counts, sums and dialogue counts must be equal; percentiles are the
engine's HDR-histogram values (3 significant digits): within one sample of the exact (linearly
interpolated) value, give or take 0.1 %.
"""
from __future__ import annotations

import copy
import datetime as dt
import json
import math
import uuid

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


def test_same_kpis(sources):
    j, e = sources
    for w in (W24, W24.previous(), W24.today()):
        a, b = j.kpis(w), e.kpis(w)
        for f in ("requests", "completed", "sessions", "completed_dialogues", "input_tokens", "output_tokens",
                  "rated_up", "rated_down", "statuses"):
            assert getattr(a, f) == getattr(b, f), (w, f)
        assert a.cost_usd == pytest.approx(b.cost_usd, rel=1e-9)
        assert a.busy_s == pytest.approx(b.busy_s, rel=1e-9)
        df = j._window(w)
        for f, col in (("ttft", "ttft_ms"), ("e2e", "latency_ms")):
            vals = sorted(df[col].dropna())
            for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
                exact, est = getattr(a, f"{f}_{name}"), getattr(b, f"{f}_{name}")
                # the engine's HDR histogram reports a rank's value to 3 significant digits (0.1 %)
                # and does not interpolate: it must lie within one sample of the exact value,
                # give or take that resolution
                pos = (len(vals) - 1) * q
                lo, hi = vals[max(0, math.floor(pos) - 1)], vals[min(len(vals) - 1, math.ceil(pos) + 1)]
                assert lo * 0.999 <= est <= hi * 1.001 and est == pytest.approx(exact, rel=0.02), (w, f, name, exact, est)


def test_same_breakdowns(sources):
    j, e = sources
    sj, se = j.series(W24, 3600), e.series(W24, 3600)
    assert list(sj["time"]) == list(se["time"])
    for c in ("requests", "completed", "input_tokens", "output_tokens"):
        assert list(sj[c]) == list(se[c]), c
    qj, qe = j.quality_by_model(W24), e.quality_by_model(W24)
    assert qj.to_dict("records") == qe.to_dict("records")
    assert j.completion_by_turn(W24).to_dict("records") == e.completion_by_turn(W24).to_dict("records")
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
    # one aggregation request (+ the two composite feedback look-ups, cached for a few seconds)
    assert e.requests_made - before <= 3 and k.requests > 0
    # the Overview's bundle: one request for three windows and the series
    e._fb_cache.clear()
    before = e.requests_made
    ek, ep, et, ey, es = e.overview(W24, 3600)
    assert e.requests_made - before == 2  # the thumbs-down ids (one page) + one aggregation
    jk, jp, jt, jy, js = j.overview(W24, 3600)
    assert (jt.requests, jt.cost_usd) == (et.requests, pytest.approx(et.cost_usd))
    assert (jy.requests, jy.cost_usd) == (ey.requests, pytest.approx(ey.cost_usd))
    for a, b in ((jk, ek), (jp, ep)):
        assert (a.requests, a.completed, a.sessions, a.completed_dialogues, a.output_tokens) == \
               (b.requests, b.completed, b.sessions, b.completed_dialogues, b.output_tokens)
        assert a.cost_usd == pytest.approx(b.cost_usd)
    assert list(js["requests"]) == list(es["requests"]) and list(js["completed"]) == list(es["completed"])


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
