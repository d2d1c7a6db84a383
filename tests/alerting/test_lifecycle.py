"""Alert lifecycle with direct scrape against a real loopback exposition server."""
from __future__ import annotations

import threading
import time

from monitor.alerting.state import StateStore

from .conftest import fast_config


class Driver:
    """Keeps producing turns on a MetricsNode at a given TTFT until stopped."""

    def __init__(self, node, ttft: float, status: str = "completed", per_s: int = 10):
        self.node, self.ttft, self.status, self.per_s = node, ttft, status, per_s
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop_ev.is_set():
            self.node.turn(self.ttft, self.status)
            self.stop_ev.wait(1 / self.per_s)

    def stop(self):
        self.stop_ev.set()
        self.t.join(2)


def test_p99_fires_and_resolves_direct_scrape(tmp_path, metrics_node, recorder, run_alertd):
    node = metrics_node()
    hook = recorder()
    cfg = fast_config(tmp_path, nodes=[node.url], receivers=[{"type": "webhook", "url": hook.url + "/am"}],
                      rules={"completion_rate": None, "scaling": None, "gpu_utilization": None})
    fast = Driver(node, 0.1)
    d = run_alertd(cfg)
    time.sleep(3)
    assert hook.bodies() == []
    fast.stop()
    node.turn(0.9, n=20)          # latency driven over the threshold
    slow_at = time.time()
    slow = Driver(node, 0.9)
    # fires within for (2s) + two evaluation intervals (1s each)
    assert hook.wait_for(lambda: hook.bodies("firing"), timeout=2 + 2 * 1 + 0.5), "alert did not fire in time"
    fired = hook.bodies("firing")[0]
    fired_after = hook.requests[0].t - slow_at
    assert fired_after <= 4.5, fired_after
    a = fired["alerts"][0]
    assert a["labels"]["rule"] == "p99_latency" and a["labels"]["instance"] == node.target
    assert float(a["annotations"]["value"]) > 0.5
    slow.stop()
    fast = Driver(node, 0.05)       # recovery
    assert hook.wait_for(lambda: hook.bodies("resolved"), timeout=8 + 2 + 3), "no resolved notice"
    fast.stop()
    assert len(hook.bodies("firing")) == 1 and len(hook.bodies("resolved")) == 1
    store = StateStore(d.cfg.state_path)
    assert [e["event"] for e in reversed(store.events())] == ["pending", "firing", "resolved"]
