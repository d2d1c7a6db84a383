"""End to end with the real node: ``seekwatch serve --engine upstream`` in front of a tiny
loopback OpenAI-compatible server whose answers we delay. Latency driven over the threshold
fires the P99 alert within `for` + two evaluation intervals (+ one scrape interval through
Prometheus), and it resolves after recovery — once with direct scrape, once through a real
Prometheus server."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from .conftest import fast_config, seekwatch_cmd
from .upstream import SlowUpstream


class ChatLoad:
    """A few clients streaming chat turns through the node; records when TTFT first exceeded a bound."""

    def __init__(self, base_url: str, workers: int = 3):
        self.base_url = base_url
        self.stop_ev = threading.Event()
        self.slow_seen_at: float | None = None
        self.slow_bound = 0.5
        self.watch = False
        self.errors = 0
        self.turns = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]
        for t in self.threads:
            t.start()

    def _run(self):
        with httpx.Client(timeout=30, trust_env=False) as c:
            while not self.stop_ev.is_set():
                t0 = time.time()
                watching = self.watch
                try:
                    with c.stream("POST", self.base_url + "/v1/chat/completions",
                                  json={"model": "deepseek-chat", "stream": True,
                                        "messages": [{"role": "user", "content": "退货流程是什么？"}]}) as r:
                        first = None
                        for line in r.iter_lines():
                            if first is None and line.startswith("data:") and '"content"' in line:
                                first = time.time()
                        self.turns += 1
                        if watching and first and first - t0 > self.slow_bound and self.slow_seen_at is None:
                            self.slow_seen_at = time.time()
                except httpx.HTTPError:
                    self.errors += 1
                    time.sleep(0.1)

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(10)


@pytest.fixture
def upstream_node(tmp_path):
    from tests.fixtures.node import start_node

    up = SlowUpstream(delay=0.03)
    node = start_node(tmp_path, "--engine", "upstream", "--upstream-url", up.base_url,
                      "--served-model-name", "deepseek-chat", ready_timeout=60)
    yield up, node
    node.stop()
    up.stop()


@pytest.mark.parametrize("mode", ["scrape", "prometheus"])
def test_node_latency_alert_fires_and_resolves(mode, tmp_path, upstream_node, recorder, run_alertd, prometheus_server):
    up, node = upstream_node
    metrics = httpx.get(node.base_url + "/metrics", timeout=10).text
    assert "seekwatch_time_to_first_token_seconds_bucket" in metrics, "the node must expose the TTFT histogram"
    hook = recorder()
    over = {"receivers": [{"type": "webhook", "url": hook.url}],
            "rules": {"completion_rate": None, "scaling": None, "gpu_utilization": None}}
    scrape_interval = 0.0
    if mode == "prometheus":
        prom = prometheus_server([f"127.0.0.1:{node.port}"], scrape_interval="1s")
        prom.wait_for_series("up == 1")
        over["prometheus_url"] = prom.url
        scrape_interval = 1.0
    else:
        over["nodes"] = [node.base_url + "/metrics"]
    cfg = fast_config(tmp_path, **over)
    load = ChatLoad(node.base_url)
    try:
        time.sleep(2)
        d = run_alertd(cfg)
        time.sleep(3)
        assert hook.bodies() == [] and load.turns > 5 and load.errors == 0
        up.delay = 0.8                      # the upstream slows down: TTFT ~0.8 s > 500 ms
        load.watch = True
        assert hook.wait_for(lambda: load.slow_seen_at is not None, timeout=10)
        budget = 2.0 + 2 * 1.0 + scrape_interval          # for + two evaluation intervals (+ scrape)
        assert hook.wait_for(lambda: hook.bodies("firing"), timeout=budget + 5), "did not fire"
        took = hook.requests[0].t - load.slow_seen_at
        assert took <= budget + 0.5, f"fired {took:.2f}s after TTFT went over, budget {budget}s"
        a = hook.bodies("firing")[0]["alerts"][0]
        assert a["labels"]["rule"] == "p99_latency" and a["labels"]["node"] == f"127.0.0.1:{node.port}"
        assert 0.5 < float(a["annotations"]["value"]) <= 1.0
        up.delay = 0.03                     # recovery
        assert hook.wait_for(lambda: hook.bodies("resolved"), timeout=8 + 2 + 6), "did not resolve"
        time.sleep(1)
        assert len(hook.bodies("firing")) == 1 and len(hook.bodies("resolved")) == 1
        assert d.d.source.kind == ("promql" if mode == "prometheus" else "scrape")
    finally:
        load.stop()


def test_node_with_auth_probes_needs_scrape_headers(tmp_path, monkeypatch):
    """`seekwatch serve --auth-probes` guards /metrics: without the key alertd reports no data
    (HTTP 401), with `scrape_headers` (key from the environment) it reads the node."""
    from monitor.alerting.config import load_config
    from monitor.alerting.scrape import ScrapeSource

    from contracts.supervisor import ProcessSpec, start
    from tests.fixtures.ports import free_port

    up = SlowUpstream(delay=0.01)
    # tests.fixtures.node.start_node polls /readyz without a key (a 401 here), so start it directly
    port = free_port()
    node = start(ProcessSpec(
        name="node", argv=seekwatch_cmd("serve", "--port", str(port), "--log-dir", str(tmp_path / "log"),
                                        "--engine", "upstream", "--upstream-url", up.base_url,
                                        "--served-model-name", "deepseek-chat", "--auth-probes"),
        env={"SEEKWATCH_API_KEYS": "sk-alertd-test"}, output=tmp_path / "node.out", grace=20.0))

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", headers={"Authorization": "Bearer sk-alertd-test"},
                             timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        node.wait_ready(ready, 60)
        url = f"http://127.0.0.1:{port}/metrics"
        bare = load_config(fast_config(tmp_path, nodes=[url]))
        src = ScrapeSource(bare)
        (o,) = src.collect()
        src.close()
        assert not o.up and "HTTP 401" in o.error
        monkeypatch.setenv("ALERTD_NODE_KEY", "sk-alertd-test")
        keyed = load_config(fast_config(tmp_path, nodes=[url], scrape_headers={"Authorization": "Bearer ${ALERTD_NODE_KEY}"}))
        src = ScrapeSource(keyed)
        (o,) = src.collect()
        src.close()
        assert o.up, o.error
    finally:
        node.stop()
        up.stop()
