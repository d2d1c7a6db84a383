"""Receivers are plug-ins: one module each, owning its config keys, its message format, its
Alertmanager mapping and which of its failures are permanent (not retried, counted, logged
once) or transient (retried with backoff). Adding a chat tool is adding one module."""
from __future__ import annotations

import json
import logging
import sys
import textwrap
import time

import pytest

from contracts.config import ConfigError
from contracts.retry import Backoff, transient_http_status
from monitor.alerting import receivers
from monitor.alerting.config import load_config
from monitor.alerting.daemon import Alertd
from monitor.alerting.export import alertmanager_config
from monitor.alerting.metrics import AlertdMetrics
from monitor.alerting.receivers import DeliveryError, build_receiver, registry

from .conftest import fast_config
from .test_receivers import StaticSource, dingtalk_reply, slow_node


def test_every_module_is_one_receiver_named_after_its_type():
    found = registry()
    assert set(found) == {"console", "dingtalk", "feishu", "slack", "webhook", "wecom"}
    for t, cls in found.items():
        assert cls.__module__ == f"monitor.alerting.receivers.{t}"


@pytest.mark.parametrize("type_,status,text,permanent", [
    ("webhook", 500, "", False), ("webhook", 503, "", False), ("webhook", 429, "", False), ("webhook", 408, "", False),
    ("webhook", 400, "bad", True), ("webhook", 401, "", True), ("webhook", 404, "", True),
    ("slack", 403, "invalid_token", True), ("slack", 410, "channel_is_archived", True), ("slack", 502, "", False),
    ("dingtalk", 200, '{"errcode": 310000, "errmsg": "sign not match"}', True),
    ("dingtalk", 200, '{"errcode": 400102, "errmsg": "robot disabled"}', True),
    ("dingtalk", 200, '{"errcode": 130101, "errmsg": "send too fast"}', False),
    ("feishu", 200, '{"code": 19021, "msg": "sign match fail"}', True),
    ("feishu", 200, '{"code": 11232, "msg": "frequency limited"}', False),
    ("wecom", 200, '{"errcode": 93000, "errmsg": "invalid webhook url"}', True),
    ("wecom", 200, '{"errcode": 45009, "errmsg": "api freq out of limit"}', False),
])
def test_each_receiver_says_which_failures_are_permanent(type_, status, text, permanent):
    rc = build_receiver({"type": type_, "name": type_, "url": "http://127.0.0.1:9/x"})
    with pytest.raises(DeliveryError) as err:
        rc.check(status, text)
    assert err.value.permanent is permanent


@pytest.mark.parametrize("type_,text", [("webhook", ""), ("slack", "ok"), ("dingtalk", '{"errcode": 0}'),
                                        ("feishu", '{"code": 0}'), ("feishu", '{"StatusCode": 0}'), ("wecom", '{"errcode": 0}')])
def test_accepted_replies(type_, text):
    build_receiver({"type": type_, "url": "http://127.0.0.1:9/x"}).check(200, text)


def test_the_retry_policy():
    b = Backoff(base=1.0, cap=10.0)
    assert [b.delay(a) for a in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert b.delay(10_000) == 10.0                      # no overflow far out
    j = Backoff(base=4.0, cap=100.0, jitter=0.5)
    assert all(3.0 <= j.delay(1) <= 5.0 for _ in range(200))
    assert [s for s in range(400, 600) if transient_http_status(s)] == [408, 429, *range(500, 600)]


def _run(tmp_path, rcs, rounds, obs):
    metrics = AlertdMetrics()
    d = Alertd(load_config(fast_config(tmp_path, nodes=["http://10.0.0.5:8000/metrics"], receivers=rcs,
                                       rules={"p99_latency": {"for": "0s"}, "scaling": None})),
               metrics=metrics, source=StaticSource(obs))
    t = time.time()
    try:
        d.evaluate_once(now=t)
        for i in range(rounds):
            d.deliverer.deliver_due(now=t + 3600 * (i + 1))   # far past any backoff
        outbox = d.store.outbox()
    finally:
        d.close()

    def count(name, outcome):
        return metrics.registry.get_sample_value("seekwatch_alertd_notifications_total",
                                                 {"receiver": name, "outcome": outcome}) or 0

    return outbox, count


def test_a_permanent_failure_is_not_retried_counted_and_logged_once(tmp_path, recorder, caplog):
    r = recorder(reply=dingtalk_reply)
    rc = {"type": "dingtalk", "name": "dt", "url": r.url + "/robot/send?access_token=a", "secret": "wrong"}
    two_nodes = [slow_node("10.0.0.5:8000"), slow_node("10.0.0.6:8000")]   # two notifications (grouped per node)
    with caplog.at_level(logging.DEBUG, logger="seekwatch.alertd.delivery"):
        outbox, count = _run(tmp_path, [rc], rounds=3, obs=two_nodes)
    assert len(outbox) == 2
    assert all(o["status"] == "failed" and o["attempts"] == 1 and "310000" in o["last_error"] for o in outbox)
    assert count("dt", "failed") == 2 and count("dt", "retry") == 0
    assert len(r.all_requests) == 2                                          # one attempt each, over 3 rounds
    errors = [x for x in caplog.records if x.levelno >= logging.ERROR]
    assert len(errors) == 1 and "refused permanently" in errors[0].getMessage()
    assert sum("refused permanently again" in x.getMessage() for x in caplog.records) == 1


def test_a_transient_failure_is_retried_until_max_attempts(tmp_path, recorder):
    r = recorder(reply=lambda rec: (503, "upstream overloaded"))
    outbox, count = _run(tmp_path, [{"type": "webhook", "name": "wh", "url": r.url + "/hook"}], rounds=6,
                         obs=[slow_node()])
    assert [(o["status"], o["attempts"]) for o in outbox] == [("failed", 6)]      # fast_config: max_attempts 6
    assert count("wh", "retry") == 5 and count("wh", "failed") == 1
    assert len(r.all_requests) == 6


PLUGIN = textwrap.dedent('''
    """A receiver added by a test: one module, nothing else edited."""
    from monitor.alerting import messages
    from monitor.alerting.receivers.base import URL, Receiver, Request


    class PagerReceiver(Receiver):
        type = "pager"
        config_schema = {"required": ["url", "routing_key"],
                         "properties": {"url": URL, "routing_key": {"type": "string", "minLength": 8}}}
        permanent_codes = frozenset({"bad-key"})

        def build(self, payload, now):
            return Request(self.url, {"key": self.cfg["routing_key"], "summary": messages.title(payload)},
                           self.headers(payload))

        def check(self, status, text):
            super().check(status, text)
            self.check_code(None if text == "ok" else text, "pager", text)

        @classmethod
        def alertmanager(cls, rc, ctx):
            return {"pagerduty_configs": [{"routing_key": rc["routing_key"], "url": rc["url"]}]}
''')


@pytest.fixture
def pager_module(tmp_path, monkeypatch):
    pkg = tmp_path / "plugins"
    pkg.mkdir()
    (pkg / "pager.py").write_text(PLUGIN)
    monkeypatch.setattr(receivers, "__path__", [*receivers.__path__, str(pkg)])
    registry.cache_clear()
    yield
    registry.cache_clear()
    sys.modules.pop("monitor.alerting.receivers.pager", None)


def test_a_new_receiver_is_one_module(tmp_path, recorder, pager_module):
    assert "pager" in registry()
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    # its own keys are schema-checked, with one-line errors
    with pytest.raises(ConfigError, match="receivers.0: 'routing_key' is a required property"):
        load_config(fast_config(cfg_dir, receivers=[{"type": "pager", "url": "http://127.0.0.1:9/x"}]))
    with pytest.raises(ConfigError, match="receivers.0.routing_key"):
        load_config(fast_config(cfg_dir, receivers=[{"type": "pager", "url": "http://127.0.0.1:9/x", "routing_key": "k"}]))
    with pytest.raises(ConfigError, match="'mention_all' was unexpected"):   # another receiver's key
        load_config(fast_config(cfg_dir, receivers=[{"type": "pager", "url": "http://127.0.0.1:9/x",
                                                     "routing_key": "k" * 8, "mention_all": True}]))
    # delivered in its own format
    r = recorder(reply=lambda rec: (200, "ok"))
    rc = {"type": "pager", "name": "pg", "url": r.url + "/v2/enqueue", "routing_key": "routing-key-1"}
    outbox, count = _run(tmp_path, [rc], rounds=1, obs=[slow_node()])
    assert [o["status"] for o in outbox] == ["sent"] and count("pg", "sent") == 1
    body = r.requests[0].body
    assert body["key"] == "routing-key-1" and "P99 latency high" in body["summary"]
    # its own permanent failures
    with pytest.raises(DeliveryError) as err:
        build_receiver(rc).check(200, "bad-key")
    assert err.value.permanent
    # exported with its own Alertmanager mapping
    conf, notes = alertmanager_config(load_config(fast_config(cfg_dir, receivers=[rc])))
    entry = next(e for e in conf["receivers"] if e["name"] == "pg")
    assert entry["pagerduty_configs"] == [{"routing_key": "routing-key-1", "url": rc["url"]}] and notes == []


def test_console_is_left_out_of_the_alertmanager_export_with_a_note(tmp_path):
    conf, notes = alertmanager_config(load_config(fast_config(tmp_path, receivers=[{"type": "console"}])))
    assert [e["name"] for e in conf["receivers"]] == ["blackhole"]
    assert notes == ["receiver 'console-0' (console) left out: it prints on alertd's own terminal"]


def test_the_message_format_is_the_receivers_own():
    payload = json.loads(json.dumps({
        "id": "n1", "status": "firing", "group_key": "g", "dashboard_url": "http://dash",
        "alerts": [{"labels": {"rule": "p99_latency", "node": "n", "severity": "critical"}, "value": 0.8,
                    "threshold": 0.5, "detail": {"window": 300, "metric": "ttft", "quantile": 0.99},
                    "starts_at": 1.7e9}]}))
    slack = build_receiver({"type": "slack", "url": "http://x"}).build(payload, 0).body["blocks"][0]["text"]["text"]
    ding = build_receiver({"type": "dingtalk", "url": "http://x"}).build(payload, 0).body["markdown"]["text"]
    wecom = build_receiver({"type": "wecom", "url": "http://x"}).build(payload, 0).body["markdown"]["content"]
    assert slack.startswith("*") and "<http://dash|仪表盘 Dashboard>" in slack
    assert ding.startswith("### ") and "\n\n" in ding and "[仪表盘 Dashboard](http://dash)" in ding
    assert "\n> 节点 Node: n" in wecom
