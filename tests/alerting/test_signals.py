"""Turn completion and dialogue completion agree everywhere with a recount from the raw records.

One scripted stretch of traffic (chat turns of every status, NextChat's title requests,
thumbs-downs on completed, truncated and aborted turns, two on one turn, one after its
conversation ended, one on a whole session) goes through the node's own metrics and
conversation tracker, scraped every 15 s, and through the node's own record builders into a
session log. Then both signals over the 15-minute window are recounted from the raw records
with ``contracts.signals`` and compared with:

* alertd (direct scrape: the exposition text -> history -> observation -> rules);
* the exported Prometheus rules, under ``promtool test rules`` with the scrapes as input series;
* the dashboard's JSON-lines source and log-store source (the real OpenSearch).
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import uuid

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from contracts import metrics as M
from contracts.signals import recount
from tests.fixtures.metrics import metric_sum

from .conftest import fast_config

IDLE_S = 60.0
T0 = 1_796_000_400.0          # a multiple of 15 s: scrape k is at T0 + 15 k
WINDOW_S = 900.0
SCRAPE_S = 15.0
PROMTOOL = shutil.which("promtool")
assert PROMTOOL, "promtool missing: run make test (Debian prometheus)"


def _traffic(seed: int = 5):
    """Events (time, kind, payload) within 12 minutes of T0, at whole seconds."""
    rng = random.Random(seed)
    statuses = ["completed"] * 14 + ["truncated", "aborted", "error", "refused"]
    ev = []
    n = 0
    for s in range(40):
        t = T0 + rng.randint(5, 480)
        for k in range(rng.randint(1, 4)):
            n += 1
            rid = f"chatcmpl-sig{n:05d}"
            st = rng.choice(statuses)
            ev.append((t, "turn", dict(sid=f"conv-{s}", rid=rid, status=st, kind="chat", k=k)))
            if k == 0 and rng.random() < 0.5:
                ev.append((t + 1, "turn", dict(sid=f"conv-{s}", rid=rid + "t", status="completed", kind="title", k=k)))
            r = rng.random()
            if r < 0.15:
                ev.append((t + rng.randint(2, 20), "fb", dict(rid=rid, sid=f"conv-{s}", rating="down")))
                if r < 0.05:   # the same user clicks thumbs-down again, with a comment
                    ev.append((t + 25, "fb", dict(rid=rid, sid=f"conv-{s}", rating="down", comment="still wrong")))
            elif r < 0.25:
                ev.append((t + rng.randint(2, 20), "fb", dict(rid=rid, sid=f"conv-{s}", rating="up")))
            t += rng.randint(10, 50)
        if s % 9 == 0:         # a thumbs-down long after the conversation ended
            ev.append((t + 90, "fb", dict(rid=rid, sid=f"conv-{s}", rating="down")))
        if s % 13 == 0:        # a rating of the whole session: rates no turn
            ev.append((t + 5, "fb", dict(rid=None, sid=f"conv-{s}", rating="down")))
    assert max(e[0] for e in ev) < T0 + 780
    return sorted(ev, key=lambda e: e[0])


@pytest.fixture(scope="module")
def run():
    """Replays the traffic through the node's metrics; returns (records, scrapes)."""
    from inference.conversations import ConversationTracker
    from inference.metrics import NodeMetrics
    from inference.session_record import build_feedback_record, build_session_record

    reg = CollectorRegistry()
    nm = NodeMetrics(reg)
    tracker = ConversationTracker(nm.observe_completed_turn_rated_down, nm.observe_conversation_ended, idle_s=IDLE_S)
    scrape_at = [None]
    nm.conversations_ended.before_collect = lambda: tracker.close_idle(scrape_at[0])
    records, scrapes = [], []
    events = _traffic()
    i = 0
    for k in range(int(WINDOW_S / SCRAPE_S) + 1):
        now = T0 + k * SCRAPE_S
        while i < len(events) and events[i][0] <= now:
            t, what, p = events[i]
            i += 1
            if what == "turn":
                nm.observe_turn(p["status"], 1.0, 0.2 if p["status"] != "error" else None, None, 0.0, 10, 5,
                                request_kind=p["kind"])
                tracker.on_turn(p["sid"], p["rid"], p["status"], t, p["kind"])
                rec = build_session_record(session_id=p["sid"], request_id=p["rid"], turn_index=p["k"], prompt="q",
                                           response="a", model_version="m1", duration_s=1.0, ttft_s=0.2,
                                           status=p["status"], input_tokens=10, output_tokens=5, cost_usd=0.0,
                                           ended_at=t, host_name="signals", request_kind=p["kind"])
                records.append(rec)
            else:
                nm.observe_feedback(p["rating"])
                tracker.on_feedback(p["rid"], p["rating"], t)
                records.append(build_feedback_record(rating=p["rating"], request_id=p["rid"], session_id=p["sid"],
                                                     comment=p.get("comment"), at=t))
        scrape_at[0] = now
        scrapes.append((now, generate_latest(reg).decode()))
    assert i == len(events)
    return records, scrapes


@pytest.fixture(scope="module")
def truth(run):
    records, _ = run
    sess = [r for r in records if r["event"]["dataset"] == "seekwatch.session"]
    fb = [r for r in records if r["event"]["dataset"] == "seekwatch.feedback"]
    rc = recount(sess, fb, T0, T0 + WINDOW_S + 1e-3, idle_s=IDLE_S)
    # the scenario exercises what the definitions are about
    assert rc.turns > 60 and rc.conversations_ended == 40
    assert 0 < rc.turns_completed < rc.turns and 0 < rc.conversations_completed < rc.conversations_ended
    return rc


def _cfg(tmp_path):
    from monitor.alerting.config import load_config

    return load_config(fast_config(tmp_path, nodes=["http://signals:8000/metrics"], evaluation_interval="15s", rules={
        "completion_rate": {"threshold": 0.99, "window": "15m", "min_samples": 5},
        "turn_completion": {"threshold": 0.99, "window": "15m", "min_samples": 5},
        "p99_latency": None, "gpu_utilization": None, "scaling": None}))


def test_alertd_reads_the_recount(run, truth, tmp_path):
    from monitor.alerting.rules import evaluate
    from monitor.alerting.scrape import NodeHistory, observe, parse_exposition

    cfg = _cfg(tmp_path)
    h = NodeHistory("http://signals:8000/metrics", keep_seconds=2 * WINDOW_S)
    for t, text in run[1]:
        h.add(parse_exposition(text, M.TIME_TO_FIRST_TOKEN, t))
    h.error = None
    o = observe(h, cfg, T0 + WINDOW_S)
    assert (o.completion.total, o.dialogues.ended, o.dialogues.completed) == \
           (truth.turns, truth.conversations_ended, truth.conversations_completed)
    assert o.completion.rate == pytest.approx(truth.turn_completion, abs=1e-12)
    assert o.dialogues.rate == pytest.approx(truth.dialogue_completion, abs=1e-12)
    ev = {e.labels["rule"]: e for e in evaluate(cfg, [o]).evaluations}
    assert ev["turn_completion"].value == pytest.approx(truth.turn_completion)
    assert ev["completion_rate"].value == pytest.approx(truth.dialogue_completion)
    assert ev["completion_rate"].active and ev["turn_completion"].active    # both below 99 %


def test_exported_rules_under_promtool(run, truth, tmp_path):
    from monitor.alerting.export import prometheus_rules

    cfg = _cfg(tmp_path)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(prometheus_rules(cfg), allow_unicode=True, sort_keys=False))
    series: dict[str, list[float]] = {}
    for _, text in run[1]:
        for fam in __import__("prometheus_client.parser", fromlist=["x"]).text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name in (M.REQUESTS_TOTAL, M.COMPLETED_TURNS_RATED_DOWN_TOTAL, M.CONVERSATIONS_ENDED_TOTAL):
                    labels = {"job": "seekwatch", "instance": "signals:8000", **s.labels}
                    key = s.name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
                    series.setdefault(key, []).append(s.value)
    first = len(next(iter(series.values())))
    assert all(len(v) == first for v in series.values())
    exp_lab = '{job="seekwatch",instance="signals:8000"}'
    test = {"rule_files": ["rules.yml"], "evaluation_interval": "15s", "tests": [{
        "interval": "15s",
        "input_series": [{"series": k, "values": " ".join(f"{v:g}" for v in vals)} for k, vals in series.items()],
        "promql_expr_test": [
            {"expr": "seekwatch:turn_completion_rate:15m", "eval_time": "15m",
             "exp_samples": [{"labels": "seekwatch:turn_completion_rate:15m" + exp_lab, "value": truth.turn_completion}]},
            {"expr": "seekwatch:dialogue_completion_rate:15m", "eval_time": "15m",
             "exp_samples": [{"labels": "seekwatch:dialogue_completion_rate:15m" + exp_lab,
                              "value": truth.dialogue_completion}]},
            {"expr": "seekwatch:conversations_ended:increase15m", "eval_time": "15m",
             "exp_samples": [{"labels": "seekwatch:conversations_ended:increase15m" + exp_lab,
                              "value": truth.conversations_ended}]},
            {"expr": "seekwatch:chat_turns:increase15m", "eval_time": "15m",
             "exp_samples": [{"labels": "seekwatch:chat_turns:increase15m" + exp_lab, "value": truth.turns}]},
        ],
    }]}
    for name, rule in (("SeekwatchCompletionRateLow", "completion_rate"), ("SeekwatchTurnCompletionLow", "turn_completion")):
        sev = "critical" if rule == "completion_rate" else "warning"
        test["tests"][0]["promql_expr_test"].append(
            {"expr": f'ALERTS{{alertname="{name}"}}', "eval_time": "15m", "exp_samples": [{
                "labels": f'ALERTS{{alertname="{name}",alertstate="firing",instance="signals:8000",job="seekwatch",'
                          f'rule="{rule}",severity="{sev}"}}', "value": 1}]})
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test, allow_unicode=True, sort_keys=False))
    r = subprocess.run([PROMTOOL, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def _window():
    import datetime as dt

    from dashboards.data.base import Window

    utc = dt.timezone.utc
    return Window(dt.datetime.fromtimestamp(T0, utc), dt.datetime.fromtimestamp(T0 + WINDOW_S + 1, utc))


def _check_kpis(k, truth):
    assert (k.chat_turns, k.completed, k.dialogues, k.completed_dialogues) == \
           (truth.turns, truth.turns_completed, truth.conversations_ended, truth.conversations_completed)
    assert k.completion_rate == pytest.approx(truth.turn_completion)
    assert k.dialogue_completion_rate == pytest.approx(truth.dialogue_completion)


def test_dashboard_jsonl_source(run, truth, tmp_path):
    from dashboards.data.jsonl import JsonlSource

    (tmp_path / "seekwatch-signals.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sorted(run[0], key=lambda r: r["@timestamp"])))
    src = JsonlSource(tmp_path, conversation_idle_s=IDLE_S)
    src.refresh()
    _check_kpis(src.kpis(_window()), truth)


def test_dashboard_log_store_source(run, truth, log_store_url):
    from contracts.logstore import FEEDBACK_STREAM, SESSION_STREAM, StoreClient

    from dashboards.data.logstore import LogStoreSource

    tag = uuid.uuid4().hex[:10]
    lines = []
    for r in run[0]:
        r = json.loads(json.dumps(r))
        r["host"] = {"name": f"sig-{tag}"}
        fb = r["event"]["dataset"] == "seekwatch.feedback"
        if r.get("request_id"):
            r["request_id"] = r["request_id"].replace("chatcmpl-", f"chatcmpl-g{tag}")
        if fb:
            r["feedback_id"] = f"fb-g{tag}{r['feedback_id'][3:]}"
        lines += [json.dumps({"create": {"_index": FEEDBACK_STREAM if fb else SESSION_STREAM,
                                         "_id": r["feedback_id"] if fb else r["request_id"]}}),
                  json.dumps(r, ensure_ascii=False)]
    with StoreClient(log_store_url) as c:
        resp = c.bulk(("\n".join(lines) + "\n").encode(), refresh="true")
        assert not resp.get("errors"), [i for i in resp["items"] if "error" in next(iter(i.values()))][:3]
    src = LogStoreSource(log_store_url, where={"host.name": f"sig-{tag}"}, conversation_idle_s=IDLE_S)
    _check_kpis(src.kpis(_window()), truth)


def test_real_node_counts_what_its_log_recounts(tmp_path):
    """``seekwatch serve`` (upstream engine) with ``--conversation-idle 1s``: its counters equal
    the recount from the session log it wrote."""
    import time

    import httpx

    from tests.fixtures.node import start_node

    from .upstream import SlowUpstream

    up = SlowUpstream(delay=0.0)
    node = start_node(tmp_path, "--engine", "upstream", "--upstream-url", up.base_url, "--served-model-name",
                      "deepseek-chat", "--conversation-idle", "1s", ready_timeout=60)
    base = f"http://127.0.0.1:{node.port}"
    try:
        with httpx.Client(timeout=30) as c:
            def turn(sid: str, reply: str) -> str:
                up.reply = reply
                r = c.post(f"{base}/v1/chat/completions", headers={"X-Session-Id": sid},
                           json={"model": "deepseek-chat", "messages": [{"role": "user", "content": f"问题 {sid}"}]})
                assert r.status_code == 200, r.text
                return r.json()["id"]

            ok, refusal = "好的，您的订单已经发货。", "抱歉，我无法帮助您处理这个请求。"
            a1 = turn("conv-a", ok)
            c.post(f"{base}/v1/feedback", json={"request_id": a1, "rating": "down"})   # a completed turn rated down
            c.post(f"{base}/v1/feedback", json={"request_id": a1, "rating": "down", "comment": "again"})
            b1 = turn("conv-b", refusal)                                               # refused ...
            c.post(f"{base}/v1/feedback", json={"request_id": b1, "rating": "down"})   # ... and rated down: once
            turn("conv-c", refusal)
            turn("conv-c", ok)                                                         # recovered: completed
            turn("conv-d", ok)
            time.sleep(1.5)                                                            # every conversation idle
            text = c.get(f"{base}/metrics").text
    finally:
        node.stop()
        up.stop()

    def sample(name: str, **labels: str) -> float:
        return metric_sum(text, name, labels)

    records = [json.loads(line) for p in sorted(node.log_dir.rglob("*.jsonl")) for line in p.read_text().splitlines()
               if line.strip()]
    sess = [r for r in records if r["event"]["dataset"] == "seekwatch.session"]
    fb = [r for r in records if r["event"]["dataset"] == "seekwatch.feedback"]
    rc = recount(sess, fb, 0, 4e9, idle_s=1.0)
    assert (rc.turns, rc.turns_completed, rc.conversations_ended, rc.conversations_completed) == (5, 2, 4, 2)
    assert sample(M.REQUESTS_TOTAL) == rc.turns
    assert sample(M.REQUESTS_TOTAL, status="completed") - sample(M.COMPLETED_TURNS_RATED_DOWN_TOTAL) == rc.turns_completed
    assert sample(M.COMPLETED_TURNS_RATED_DOWN_TOTAL) == 1
    assert sample(M.CONVERSATIONS_ENDED_TOTAL) == rc.conversations_ended
    assert sample(M.CONVERSATIONS_ENDED_TOTAL, outcome="completed") == rc.conversations_completed
