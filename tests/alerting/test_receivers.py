"""Each receiver against a real loopback HTTP endpoint that checks payload and signature the
way the chat tool does (DingTalk: timestamp + HMAC-SHA256 sign in the query; Feishu: signed
body; WeCom/Slack: markdown; webhook: Alertmanager's payload format)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from urllib.parse import parse_qs

import pytest

from monitor.alerting.config import load_config
from monitor.alerting.daemon import Alertd
from monitor.alerting.model import Completion, NodeObservation, Dialogues

from .conftest import fast_config

SECRET = "SECtest0123456789abcdef"


class StaticSource:
    """Hands the rules fixed observations (the receivers are under test here, not the sources)."""

    kind = "static"

    def __init__(self, obs):
        self.obs = obs

    def collect(self, now=None):
        return self.obs

    def close(self):
        pass


def slow_node(node="10.0.0.5:8000"):
    return NodeObservation(node=node, latency=0.812, completion=Completion(100, 99, 0), gpu={"0": 0.5}, running=1.0)


def ok_node(node="10.0.0.5:8000"):
    return NodeObservation(node=node, latency=0.120, completion=Completion(100, 99, 0), gpu={"0": 0.5}, running=1.0)


def dingtalk_reply(rec):
    q = parse_qs(rec.query)
    if "timestamp" not in q or "sign" not in q:
        return 200, json.dumps({"errcode": 310000, "errmsg": "sign not match"})
    ts = q["timestamp"][0]
    expected = base64.b64encode(hmac.new(SECRET.encode(), f"{ts}\n{SECRET}".encode(), hashlib.sha256).digest()).decode()
    if q["sign"][0] != expected or abs(time.time() * 1000 - int(ts)) > 3600_000:
        return 200, json.dumps({"errcode": 310000, "errmsg": "sign not match"})
    b = rec.body
    if b.get("msgtype") != "markdown" or not b["markdown"].get("title") or not b["markdown"].get("text"):
        return 200, json.dumps({"errcode": 40035, "errmsg": "bad message"})
    return 200, json.dumps({"errcode": 0, "errmsg": "ok"})


def feishu_reply(rec):
    b = rec.body
    ts = b.get("timestamp")
    key = f"{ts}\n{SECRET}".encode()
    expected = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    if b.get("sign") != expected or abs(time.time() - int(ts)) > 3600:
        return 200, json.dumps({"code": 19021, "msg": "sign match fail or timestamp is not within one hour from current time"})
    if b.get("msg_type") != "interactive" or "card" not in b:
        return 200, json.dumps({"code": 9499, "msg": "Bad Request"})
    return 200, json.dumps({"code": 0, "msg": "success", "data": {}})


def wecom_reply(rec):
    b = rec.body
    if b.get("msgtype") != "markdown" or len(b["markdown"]["content"].encode()) > 4096:
        return 200, json.dumps({"errcode": 40008, "errmsg": "invalid message type"})
    return 200, json.dumps({"errcode": 0, "errmsg": "ok"})


def slack_reply(rec):
    b = rec.body
    if not b.get("text") or b["blocks"][0]["text"]["type"] != "mrkdwn":
        return 400, "invalid_payload"
    return 200, "ok"


def run_cycle(tmp_path, receivers, obs_seq):
    cfg = load_config(fast_config(tmp_path, nodes=["http://10.0.0.5:8000/metrics"], receivers=receivers,
                                  rules={"p99_latency": {"for": "0s"}, "scaling": None}))
    src = StaticSource(obs_seq[0])
    d = Alertd(cfg, source=src)
    t = time.time()
    try:
        for i, obs in enumerate(obs_seq):
            src.obs = obs
            d.evaluate_once(now=t + i)
            d.deliverer.deliver_due(now=t + i)
        return d.store.outbox()
    finally:
        d.close()


@pytest.mark.parametrize("kind,reply,path", [
    ("dingtalk", dingtalk_reply, "/robot/send?access_token=abc"),
    ("feishu", feishu_reply, "/open-apis/bot/v2/hook/xyz"),
    ("wecom", wecom_reply, "/cgi-bin/webhook/send?key=k"),
    ("slack", slack_reply, "/services/T0/B0/X"),
])
def test_chat_receivers_sign_and_format(tmp_path, recorder, kind, reply, path):
    r = recorder(reply=reply)
    rc = {"type": kind, "url": r.url + path}
    if kind in ("dingtalk", "feishu"):
        rc["secret"] = SECRET
    outbox = run_cycle(tmp_path, [rc], [[slow_node()], [ok_node()]])
    assert [o["status"] for o in outbox] == ["sent", "sent"], outbox
    assert len(r.requests) == 2
    firing, resolved = r.requests
    if kind == "dingtalk":
        text = firing.body["markdown"]["text"]
        assert "access_token=abc" in firing.query
    elif kind == "feishu":
        text = firing.body["card"]["elements"][0]["text"]["content"]
        assert firing.body["card"]["header"]["template"] == "red"
        assert resolved.body["card"]["header"]["template"] == "green"
        assert firing.body["card"]["elements"][1]["actions"][0]["url"] == "http://127.0.0.1:8501"
    elif kind == "wecom":
        text = firing.body["markdown"]["content"]
    else:
        text = firing.body["blocks"][0]["text"]["text"]
    # bilingual: rule, value vs threshold, node, since when, dashboard link
    for needle in ("P99 延迟过高", "P99 latency high", "812 ms", "500 ms", "10.0.0.5:8000", "开始于 Since", "UTC",
                   "仪表盘 Dashboard", "http://127.0.0.1:8501", "阈值", "threshold"):
        assert needle in text, (needle, text)
    rtext = json.dumps(resolved.body, ensure_ascii=False)
    assert "已恢复 RESOLVED" in rtext and "持续 lasted" in rtext
    assert firing.headers["x-seekwatch-notification-id"] != resolved.headers["x-seekwatch-notification-id"]


def test_bad_signature_is_a_failed_delivery(tmp_path, recorder):
    """A bad signature cannot succeed on a retry: failed after one attempt (permanent failures:
    tests/alerting/test_receiver_plugins.py)."""
    r = recorder(reply=dingtalk_reply)
    outbox = run_cycle(tmp_path, [{"type": "dingtalk", "url": r.url + "/robot/send?access_token=a", "secret": "wrong"}],
                       [[slow_node()]])
    assert outbox[0]["status"] == "failed" and outbox[0]["attempts"] == 1
    assert "310000" in outbox[0]["last_error"]
    assert r.requests == []


def test_generic_webhook_is_alertmanager_format(tmp_path, recorder):
    r = recorder()
    outbox = run_cycle(tmp_path, [{"type": "webhook", "name": "am", "url": r.url + "/hook",
                                   "headers": {"Authorization": "Bearer t0k"}}],
                       [[slow_node(), NodeObservation(node="10.0.0.6:8000", up=False, error="connection refused")],
                        [slow_node(), NodeObservation(node="10.0.0.6:8000", up=False, error="connection refused")],
                        [slow_node(), NodeObservation(node="10.0.0.6:8000", up=False, error="connection refused")],
                        [ok_node(), NodeObservation(node="10.0.0.6:8000", up=False, error="connection refused")]])
    assert all(o["status"] == "sent" for o in outbox)
    bodies = r.bodies()
    assert r.requests[0].headers["authorization"] == "Bearer t0k"
    for b in bodies:
        assert set(b) == {"version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels",
                          "commonLabels", "commonAnnotations", "externalURL", "alerts"}
        assert b["version"] == "4" and b["receiver"] == "am"
        for a in b["alerts"]:
            assert set(a) == {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
            assert a["startsAt"].endswith("Z")
    by = {(b["status"], b["alerts"][0]["labels"]["alertname"]): b for b in bodies}
    assert set(by) == {("firing", "SeekwatchP99LatencyHigh"), ("firing", "SeekwatchNoData"),
                       ("resolved", "SeekwatchP99LatencyHigh")}
    f = by[("firing", "SeekwatchP99LatencyHigh")]
    assert f["groupLabels"] == {"rule": "p99_latency", "node": "10.0.0.5:8000"}
    assert f["alerts"][0]["labels"]["instance"] == "10.0.0.5:8000"
    assert f["alerts"][0]["labels"]["severity"] == "critical"
    assert f["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"
    assert float(f["alerts"][0]["annotations"]["value"]) == pytest.approx(0.812)
    res = by[("resolved", "SeekwatchP99LatencyHigh")]
    assert res["alerts"][0]["endsAt"] > res["alerts"][0]["startsAt"]
    nd = by[("firing", "SeekwatchNoData")]["alerts"][0]
    assert "connection refused" in nd["annotations"]["description"]


def test_console_receiver_prints_bilingual(tmp_path, capsys):
    run_cycle(tmp_path, [{"type": "console"}], [[slow_node()]])
    out = capsys.readouterr().out
    assert "P99 延迟过高 / P99 latency high" in out and "812 ms" in out and "10.0.0.5:8000" in out


def test_grouping_merges_nodes_when_grouped_by_rule(tmp_path, recorder):
    r = recorder()
    cfg = load_config(fast_config(tmp_path, nodes=["http://a:1/metrics"], group_by=["rule"],
                                  receivers=[{"type": "webhook", "url": r.url}],
                                  rules={"p99_latency": {"for": "0s"}, "scaling": None}))
    d = Alertd(cfg, source=StaticSource([slow_node("a:1"), slow_node("b:1"), ok_node("c:1")]))
    try:
        d.evaluate_once()
        d.deliverer.deliver_due()
    finally:
        d.close()
    (b,) = r.bodies()
    assert b["groupLabels"] == {"rule": "p99_latency"}
    assert sorted(a["labels"]["node"] for a in b["alerts"]) == ["a:1", "b:1"]


def test_mixed_group_message_names_each_rule(tmp_path, recorder):
    r = recorder(reply=wecom_reply)
    cfg = load_config(fast_config(tmp_path, nodes=["http://a:1/metrics"], group_by=["node"],
                                  receivers=[{"type": "wecom", "url": r.url}],
                                  rules={"p99_latency": {"for": "0s"}, "scaling": None}))
    d = Alertd(cfg, source=StaticSource([NodeObservation(node="a:1", latency=0.9, completion=Completion(100, 90, 0),
                                                         dialogues=Dialogues(40, 20), gpu={"1": 0.99}, running=1.0)]))
    try:
        d.evaluate_once()
        d.deliverer.deliver_due()
    finally:
        d.close()
    (b,) = r.bodies()
    text = b["markdown"]["content"]
    assert text.startswith("**🔴 [严重 CRITICAL] 3 条告警 / 3 alerts**")
    for needle in ("P99 latency high", "Dialogue completion rate low", "GPU utilization high", "GPU 1", "50.0%"):
        assert needle in text, needle


def test_bridge_round_trips_alertmanager_payloads(tmp_path, recorder):
    """alertd's own Alertmanager-format webhook, fed to its bridge, renders the same message."""
    import httpx

    from monitor.alerting.bridge import AlertmanagerBridge
    from monitor.alerting.delivery import Deliverer
    from tests.fixtures.ports import free_port

    am_hook = recorder()
    wecom = recorder(reply=wecom_reply)
    run_cycle(tmp_path, [{"type": "webhook", "url": am_hook.url}], [[slow_node()], [ok_node()]])
    receivers = [{"type": "wecom", "name": "wc", "url": wecom.url}]
    state = tmp_path / "bridge.sqlite"
    bridge = AlertmanagerBridge(f"127.0.0.1:{free_port()}", state, receivers, "http://dash").start()
    try:
        base = f"http://127.0.0.1:{bridge.port}/alertmanager/"
        assert httpx.post(base + "nope", json={}).status_code == 404
        assert httpx.post(base + "wc", content=b"not json").status_code == 400
        for b in am_hook.bodies():
            assert httpx.post(base + "wc", json=b).status_code == 200
    finally:
        bridge.stop()
    d = Deliverer(state, receivers, {"backoff": 0.1})
    d.deliver_due()
    d.close()
    firing, resolved = [r.body["markdown"]["content"] for r in wecom.requests]
    assert "P99 延迟过高 / P99 latency high" in firing and "812 ms" in firing and "10.0.0.5:8000" in firing
    assert "over 8s = 812 ms, threshold > 500 ms" in firing
    assert "已恢复 RESOLVED" in resolved and "持续 lasted" in resolved
