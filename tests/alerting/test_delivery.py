"""Delivery: a receiver that is down at first is retried with exponential backoff, then gets the
notification exactly once; every attempt is logged and counted."""
from __future__ import annotations

import time

from monitor.alerting.delivery import backoff_delay
from tests.fixtures.ports import free_port

from .conftest import Recorder, fast_config


def _slow(node):
    node.turn(0.1, n=5)
    node.turn(0.95, n=50)


def test_backoff_doubles_and_caps():
    assert [backoff_delay(a, 1.0, 10.0) for a in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_receiver_answering_503_first_is_retried_then_delivered_once(tmp_path, metrics_node, recorder, run_alertd, caplog):
    node = metrics_node()
    hook = recorder(fail_first=3)
    cfg = fast_config(tmp_path, nodes=[node.url], receivers=[{"type": "webhook", "name": "hook", "url": hook.url}],
                      rules={"p99_latency": {"for": "0s"}, "completion_rate": None, "scaling": None})
    caplog.set_level("INFO", logger="seekwatch.alertd")
    d = run_alertd(cfg)
    time.sleep(1.2)
    _slow(node)
    assert hook.wait_for(lambda: len(hook.requests) >= 1, timeout=15)
    time.sleep(2.0)   # any duplicate would show up here
    assert hook.attempts == 4 and len(hook.requests) == 1
    times = [r.t for r in hook.all_requests]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps[1] > gaps[0] * 1.4 and gaps[2] > gaps[1] * 1.4, gaps      # 0.2s, 0.4s, 0.8s
    (row,) = d.d.store.outbox()
    assert row["status"] == "sent" and row["attempts"] == 4
    reg = d.d.metrics.registry
    assert reg.get_sample_value("seekwatch_alertd_notifications_total", {"receiver": "hook", "outcome": "retry"}) == 3
    assert reg.get_sample_value("seekwatch_alertd_notifications_total", {"receiver": "hook", "outcome": "sent"}) == 1
    assert sum("attempt 3 failed" in m for m in caplog.messages) == 1
    assert any("delivered to hook on attempt 4" in m for m in caplog.messages)


def test_receiver_not_listening_at_first(tmp_path, metrics_node, run_alertd):
    node = metrics_node()
    port = free_port()
    cfg = fast_config(tmp_path, nodes=[node.url],
                      receivers=[{"type": "webhook", "name": "late", "url": f"http://127.0.0.1:{port}/hook"}],
                      rules={"p99_latency": {"for": "0s"}, "completion_rate": None, "scaling": None})
    d = run_alertd(cfg)
    time.sleep(1.2)
    _slow(node)
    deadline = time.time() + 10
    while time.time() < deadline and not any(r["attempts"] >= 2 for r in d.d.store.outbox()):
        time.sleep(0.1)
    (row,) = d.d.store.outbox()
    assert row["status"] == "pending" and row["attempts"] >= 2 and "Connect" in row["last_error"]
    hook = Recorder(port=port)   # the receiver comes up
    try:
        assert hook.wait_for(lambda: len(hook.requests) == 1, timeout=10)
        time.sleep(1.5)
        assert len(hook.all_requests) == 1
        assert d.d.store.outbox()[0]["status"] == "sent"
    finally:
        hook.stop()


def test_gives_up_after_max_attempts(tmp_path, metrics_node, recorder, run_alertd):
    node = metrics_node()
    hook = recorder(fail_first=1000)
    cfg = fast_config(tmp_path, nodes=[node.url], receivers=[{"type": "webhook", "name": "dead", "url": hook.url}],
                      rules={"p99_latency": {"for": "0s"}, "completion_rate": None, "scaling": None},
                      delivery={"backoff": "100ms", "max_backoff": "200ms", "max_attempts": 3})
    d = run_alertd(cfg)
    time.sleep(1.2)
    _slow(node)
    assert hook.wait_for(lambda: d.d.store.outbox("failed"), timeout=10)
    time.sleep(0.5)
    assert hook.attempts == 3
    reg = d.d.metrics.registry
    assert reg.get_sample_value("seekwatch_alertd_notifications_total", {"receiver": "dead", "outcome": "failed"}) == 1


def test_resolved_never_overtakes_its_firing_notice(tmp_path, recorder):
    """Receiver down while an alert fires and clears: once it is back, firing arrives before resolved."""
    from monitor.alerting.config import load_config
    from monitor.alerting.daemon import Alertd

    from .test_receivers import StaticSource, ok_node, slow_node

    hook = recorder(fail_first=2)
    cfg = load_config(fast_config(tmp_path, nodes=["http://10.0.0.5:8000/metrics"],
                                  receivers=[{"type": "webhook", "url": hook.url}],
                                  rules={"p99_latency": {"for": "0s"}, "scaling": None},
                                  delivery={"backoff": "1s", "max_backoff": "1s", "max_attempts": 10}))
    src = StaticSource([slow_node()])
    d = Alertd(cfg, source=src)
    try:
        d.evaluate_once()
        d.deliverer.deliver_due()          # attempt 1 fails, backs off 1 s
        src.obs = [ok_node()]
        d.evaluate_once()                  # resolved queued now, due at once
        d.deliverer.deliver_due()          # must not send the resolved notice first
        assert hook.attempts == 1
        deadline = time.time() + 10
        while time.time() < deadline and len(hook.requests) < 2:
            d.deliverer.deliver_due()
            time.sleep(0.1)
    finally:
        d.close()
    assert [b["status"] for b in hook.bodies()] == ["firing", "resolved"]
