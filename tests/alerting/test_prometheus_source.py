"""The PromQL source through a real Prometheus server: same decisions as direct scrape on the
same node, and the alert lifecycle end to end."""
from __future__ import annotations

import time

import pytest

from monitor.alerting.config import load_config
from monitor.alerting.promql import PromQLSource, SourceError
from monitor.alerting.rules import evaluate
from monitor.alerting.scrape import ScrapeSource

from .conftest import Driver, fast_config


def _decisions(cfg, obs):
    return {e.key: e.active for e in evaluate(cfg, obs).evaluations}


def test_both_sources_decide_the_same(tmp_path, metrics_node, prometheus_server):
    good = metrics_node(gpus=2, running=9)
    bad = metrics_node(gpus=1, running=2)
    prom = prometheus_server([good.target, bad.target], scrape_interval="1s")
    prom.wait_for_series("up == 1", count=2)
    e2e = {"p99_e2e_latency": {"enabled": True, "threshold_ms": 1000, "window": "8s", "for": "0s"}}
    scfg = load_config(fast_config(tmp_path, nodes=[good.url, bad.url], rules=e2e))
    pcfg = load_config(fast_config(tmp_path, prometheus_url=prom.url, rules=e2e))
    scrape, promql = ScrapeSource(scfg), PromQLSource(pcfg)
    try:
        good.gpu_util.labels("0").set(0.95)    # hot GPU on the good node
        good.gpu_util.labels("1").set(0.30)
        bad.gpu_util.labels("0").set(0.50)
        t_end = time.time() + 9
        while time.time() < t_end:
            good.turn(0.12, n=3)
            good.conversation("completed")
            bad.turn(0.9, n=2)                 # slow ...
            bad.turn(0.1, "error")             # ... and a third of its turns fail
            bad.feedback.labels("down").inc()
            bad.rated_down.inc()
            bad.conversation("completed")
            bad.conversation("incomplete", n=2)  # two of three conversations end badly
            scrape.collect()
            time.sleep(1)
        time.sleep(1.5)                        # let Prometheus scrape the last state
        now = time.time()
        s_obs = {o.node: o for o in scrape.collect(now)}
        p_obs = {o.node: o for o in promql.collect(now)}
    finally:
        scrape.close()
        promql.close()
    assert set(s_obs) == set(p_obs) == {good.target, bad.target}
    for n in s_obs:
        assert s_obs[n].latency == pytest.approx(p_obs[n].latency, rel=0.1), n
        assert s_obs[n].latency_e2e == pytest.approx(p_obs[n].latency_e2e, rel=0.1), n
        assert s_obs[n].completion.rate == pytest.approx(p_obs[n].completion.rate, abs=0.05), n
        assert s_obs[n].dialogues.rate == pytest.approx(p_obs[n].dialogues.rate, abs=0.05), n
        assert set(s_obs[n].gpu) == set(p_obs[n].gpu)
        for g in s_obs[n].gpu:
            assert s_obs[n].gpu[g] == pytest.approx(p_obs[n].gpu[g], abs=0.02)
        assert s_obs[n].running == pytest.approx(p_obs[n].running)
    sd = _decisions(scfg, list(s_obs.values()))
    pd = _decisions(pcfg, list(p_obs.values()))
    assert sd == pd
    fired = sorted(k for k, v in sd.items() if v)
    assert fired == sorted([f"p99_latency|{bad.target}", f"p99_e2e_latency|{bad.target}", f"completion_rate|{bad.target}",
                            f"turn_completion|{bad.target}",
                            f"gpu_utilization|{good.target}|gpu=0"])


def test_prometheus_down_is_a_no_data_alert_not_green(tmp_path):
    from tests.fixtures.ports import free_port

    cfg = load_config(fast_config(tmp_path, prometheus_url=f"http://127.0.0.1:{free_port()}"))
    src = PromQLSource(cfg)
    with pytest.raises(SourceError):
        src.collect()
    src.close()


@pytest.mark.parametrize("mode", ["scrape", "prometheus"])
def test_alert_fires_within_for_plus_two_intervals_and_resolves(mode, tmp_path, metrics_node, recorder,
                                                               run_alertd, prometheus_server):
    node = metrics_node()
    hook = recorder()
    over = {"receivers": [{"type": "webhook", "url": hook.url}],
            "rules": {"completion_rate": None, "scaling": None, "gpu_utilization": None}}
    scrape_interval = 0.0
    if mode == "prometheus":
        prom = prometheus_server([node.target], scrape_interval="1s")
        prom.wait_for_series("up == 1")
        over["prometheus_url"] = prom.url
        scrape_interval = 1.0
    else:
        over["nodes"] = [node.url]
    cfg = fast_config(tmp_path, **over)
    fast = Driver(node, 0.08)
    d = run_alertd(cfg)
    time.sleep(3)
    fast.stop()
    node.turn(0.9, n=10)
    t_slow = time.time()
    slow = Driver(node, 0.9)
    for_s, ev = 2.0, 1.0
    budget = for_s + 2 * ev + scrape_interval
    try:
        assert hook.wait_for(lambda: hook.bodies("firing"), timeout=budget + 3)
        took = hook.requests[0].t - t_slow
        assert took <= budget + 0.5, f"fired after {took:.2f}s, budget {budget}s"
        a = hook.bodies("firing")[0]["alerts"][0]
        assert a["labels"]["node"] == node.target and a["labels"]["rule"] == "p99_latency"
    finally:
        slow.stop()
    fast = Driver(node, 0.05)
    try:
        assert hook.wait_for(lambda: hook.bodies("resolved"), timeout=8 + 2 + 5)
    finally:
        fast.stop()
    time.sleep(1)
    assert len(hook.bodies("firing")) == 1 and len(hook.bodies("resolved")) == 1
    assert d.d.source.kind == ("promql" if mode == "prometheus" else "scrape")
    p99 = [e["event"] for e in reversed(d.d.store.events()) if e["labels"]["rule"] == "p99_latency"]
    assert p99 == ["pending", "firing", "resolved"]
