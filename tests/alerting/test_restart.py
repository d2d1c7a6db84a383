"""alertd SIGKILLed while an alert fires, then restarted: no duplicate notification, and the
resolved notice still arrives. Real ``seekwatch alertd`` processes, real loopback servers."""
from __future__ import annotations

import signal
import time

from monitor.alerting.state import StateStore

from .conftest import Driver, fast_config, start_alertd_process


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_sigkill_while_firing_no_duplicate_and_resolved_arrives(tmp_path, metrics_node, recorder):
    node = metrics_node()
    hook = recorder()
    cfg = fast_config(tmp_path, nodes=[node.url], receivers=[{"type": "webhook", "url": hook.url}],
                      rules={"completion_rate": None, "scaling": None, "gpu_utilization": None})
    log = tmp_path / "alertd.log"
    proc = start_alertd_process(cfg, log)
    procs = [proc]
    slow = None
    try:
        time.sleep(2)
        slow = Driver(node, 0.9)
        assert hook.wait_for(lambda: hook.bodies("firing"), timeout=20), log.read_text()
        # Kill once alertd has recorded the delivery (the receiver logs a request before alertd
        # reads its 200; a kill inside that window re-sends it: at-least-once, docs/alerts.md).
        store = StateStore(tmp_path / "alertd.sqlite")
        assert hook.wait_for(lambda: [r["status"] for r in store.outbox()] == ["sent"], timeout=5)
        store.close()
        _kill(proc)
        time.sleep(1)
        proc = start_alertd_process(cfg, log)
        procs.append(proc)
        time.sleep(5)                       # still slow: the restarted daemon must not re-send
        assert len(hook.bodies("firing")) == 1, [(r.headers.get("x-seekwatch-notification-id"), r.t) for r in hook.requests]
        assert proc.poll() is None
        slow.stop()
        slow = Driver(node, 0.05)
        assert hook.wait_for(lambda: hook.bodies("resolved"), timeout=20), log.read_text()
        time.sleep(1.5)
        assert len(hook.bodies("firing")) == 1 and len(hook.bodies("resolved")) == 1
        assert hook.bodies("resolved")[0]["alerts"][0]["fingerprint"] == hook.bodies("firing")[0]["alerts"][0]["fingerprint"]
    finally:
        if slow:
            slow.stop()
        for p in procs:
            p.stop()
    store = StateStore(tmp_path / "alertd.sqlite")
    assert [r["status"] for r in store.outbox()] == ["sent", "sent"]


def test_sigkill_with_undelivered_notification_delivers_it_once_after_restart(tmp_path, metrics_node, recorder):
    """The firing notice is queued but its receiver is down when alertd dies: the outbox keeps it."""
    node = metrics_node()
    hook = recorder(fail_first=10**6)
    cfg = fast_config(tmp_path, nodes=[node.url], receivers=[{"type": "webhook", "url": hook.url}],
                      rules={"p99_latency": {"for": "0s"}, "completion_rate": None, "scaling": None,
                             "gpu_utilization": None})
    log = tmp_path / "alertd.log"
    proc = start_alertd_process(cfg, log)
    procs = [proc]
    try:
        time.sleep(2)
        node.turn(0.1, n=5)
        node.turn(0.95, n=50)
        assert hook.wait_for(lambda: hook.attempts >= 1, timeout=15), log.read_text()
        _kill(proc)
        hook.fail_first = 0              # the receiver recovers while alertd is dead
        proc = start_alertd_process(cfg, log)
        procs.append(proc)
        assert hook.wait_for(lambda: hook.bodies("firing"), timeout=15), log.read_text()
        time.sleep(2)
        assert len(hook.bodies("firing")) == 1
    finally:
        for p in procs:
            p.stop()


def test_daemon_serves_its_own_metrics_and_once_mode(tmp_path, metrics_node):
    import httpx

    from tests.fixtures.ports import free_port, wait_for_port

    from .conftest import REPO, seekwatch_cmd

    node = metrics_node(running=45)
    port = free_port()
    cfg = fast_config(tmp_path, nodes=[node.url], metrics_listen=f"127.0.0.1:{port}", receivers=[{"type": "console"}],
                      rules={"scaling": {"capacity": 50, "window": "2s"}})
    proc = start_alertd_process(cfg, tmp_path / "alertd.log")
    try:
        wait_for_port(port, timeout=30)
        deadline = time.time() + 15
        text = ""
        while time.time() < deadline:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            if "seekwatch_alertd_scaling_recommendation_instances 2.0" in text:
                break
            time.sleep(0.5)
        assert "seekwatch_alertd_scaling_recommendation_instances 2.0" in text, text
        assert "seekwatch_alertd_fleet_load_ratio 0.9" in text
        assert f'seekwatch_alertd_node_up{{node="{node.target}"}} 1.0' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    import subprocess

    r = subprocess.run(seekwatch_cmd("alertd", "--config", str(cfg), "--once"), cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
