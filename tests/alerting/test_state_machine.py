"""Rules and the alert state machine on fixed observations with explicit clocks: pending ->
firing after `for`, repeat interval, resolved notices, silences (CLI, expiry), no data,
unknown keeps state, scaling recommendation."""
from __future__ import annotations

import math
import subprocess
import time

import pytest

from monitor.alerting.config import load_config
from monitor.alerting.daemon import Alertd
from monitor.alerting.model import UNKNOWN, Completion, Dialogues, NodeObservation, histogram_quantile, increase

from .conftest import REPO, fast_config, seekwatch_cmd
from .test_receivers import StaticSource


class Harness:
    def __init__(self, tmp_path, hook_url, **over):
        over.setdefault("rules", {})
        over.setdefault("nodes", ["http://n:1/metrics"])
        self.cfg_path = fast_config(tmp_path, receivers=[{"type": "webhook", "url": hook_url}], **over)
        self.cfg = load_config(self.cfg_path)
        self.src = StaticSource([])
        self.d = Alertd(self.cfg, source=self.src)
        self.t0 = 1_800_000_000.0

    def step(self, at, *obs):
        self.src.obs = list(obs)
        self.d.evaluate_once(now=self.t0 + at)
        self.d.deliverer.deliver_due(now=self.t0 + at)

    def states(self):
        return {a["key"]: a["state"] for a in self.d.store.alerts()}

    def close(self):
        self.d.close()


def obs(node="n:1", latency=0.1, comp=(100, 100, 0), gpu=None, running=1.0, up=True, dial=(100, 100)):
    return NodeObservation(node=node, up=up, error=None if up else "connection refused", latency=latency,
                           completion=Completion(*comp) if comp else UNKNOWN, gpu=gpu or {}, running=running,
                           dialogues=Dialogues(*dial) if dial else UNKNOWN)


@pytest.fixture
def harness(tmp_path, recorder):
    made = []

    def make(**over):
        hook = recorder()
        h = Harness(tmp_path, hook.url, **over)
        h.hook = hook
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_histogram_quantile_matches_prometheus():
    # the same numbers promtool computes in deploy/prometheus/tests/rules_test.yml
    assert histogram_quantile(0.99, [(0.5, 0), (0.8, 0), (1.0, 10), (math.inf, 10)]) == pytest.approx(0.998)
    assert histogram_quantile(0.99, [(0.5, 10), (0.8, 10), (1.0, 10), (math.inf, 10)]) == pytest.approx(0.495)
    assert histogram_quantile(0.99, [(0.5, 0), (math.inf, 10)]) == 0.5          # +Inf bucket: highest finite bound
    assert math.isnan(histogram_quantile(0.99, [(0.5, 0), (math.inf, 0)]))
    assert increase([5, 7, 2, 4]) == 2 + 2 + 2                                    # counter reset counted


def test_pending_then_firing_after_for_then_resolved(harness):
    h = harness(rules={"p99_latency": {"for": "3s"}})
    h.step(0, obs(latency=0.9))
    assert h.states() == {"p99_latency|n:1": "pending"}
    h.step(2, obs(latency=0.9))
    assert h.states() == {"p99_latency|n:1": "pending"} and h.hook.bodies() == []
    h.step(3, obs(latency=0.9))
    assert h.states() == {"p99_latency|n:1": "firing"}
    assert [b["status"] for b in h.hook.bodies()] == ["firing"]
    h.step(4, obs(latency=0.2))
    assert h.states() == {}
    assert [b["status"] for b in h.hook.bodies()] == ["firing", "resolved"]


def test_pending_that_clears_sends_nothing(harness):
    h = harness(rules={"p99_latency": {"for": "3s"}})
    h.step(0, obs(latency=0.9))
    h.step(1, obs(latency=0.1))
    h.step(5, obs(latency=0.1))
    assert h.states() == {} and h.hook.bodies() == []


def test_repeat_interval(harness):
    h = harness(repeat_interval="10s", rules={"p99_latency": {"for": "0s"}})
    for t in range(0, 25):
        h.step(t, obs(latency=0.9))
    firing = h.hook.bodies("firing")
    assert len(firing) == 3     # t=0, t=10, t=20
    assert h.d.store.outbox()[1]["payload"]["alerts"][0]["repeat"] is True


def test_unknown_keeps_state(harness):
    h = harness(rules={"p99_latency": {"for": "0s"}})
    h.step(0, obs(latency=0.9))
    h.step(1, obs(latency=UNKNOWN))       # e.g. first cycle after a restart
    assert h.states() == {"p99_latency|n:1": "firing"}
    h.step(2, obs(latency=None))          # a full window without requests: nothing slow
    assert h.states() == {}


def test_no_data_fires_and_freezes_other_alerts(harness):
    h = harness(rules={"p99_latency": {"for": "0s"}, "no_data": {"for": "2s"}})
    h.step(0, obs(latency=0.9))
    h.step(1, obs(up=False))
    h.step(2, obs(up=False))
    assert h.states() == {"p99_latency|n:1": "firing", "no_data|n:1": "pending"}
    h.step(3, obs(up=False))
    assert h.states()["no_data|n:1"] == "firing"
    nd = [b for b in h.hook.bodies("firing") if b["alerts"][0]["labels"]["rule"] == "no_data"]
    assert len(nd) == 1 and "connection refused" in nd[0]["alerts"][0]["annotations"]["description"]
    h.step(4, obs(latency=0.1))
    assert h.states() == {}
    assert len(h.hook.bodies("resolved")) == 2


def test_node_removed_from_config_resolves(harness):
    h = harness(rules={"p99_latency": {"for": "0s"}})
    h.step(0, obs(latency=0.9), obs(node="gone:1", latency=0.9))
    h.step(1, obs(latency=0.9))
    assert set(h.states()) == {"p99_latency|n:1"}


def test_dialogue_completion_is_per_conversation_and_needs_min_samples(harness):
    """对话完成率 reads ended conversations, not turns: failing turns alone do not fire it."""
    h = harness(rules={"completion_rate": {"threshold": 0.9, "min_samples": 20}, "turn_completion": None})
    h.step(0, obs(dial=(10, 0)))                       # 0 % but only 10 conversations ended: no decision
    assert h.states() == {}
    h.step(1, obs(dial=(100, 95), comp=(100, 10, 0)))  # 95 % of conversations, 10 % of turns
    assert h.states() == {}
    h.step(2, obs(dial=(40, 34)))                      # 85 %
    assert h.states() == {"completion_rate|n:1": "firing"}
    (b,) = h.hook.bodies("firing")
    desc = b["alerts"][0]["annotations"]["description"]
    assert "85.0%" in desc and "对话完成率" in desc and "per conversation" in desc and "40 conversations ended" in desc


def test_turn_completion_counts_thumbs_down_on_completed_turns(harness):
    h = harness(rules={"completion_rate": None, "turn_completion": {"enabled": True, "threshold": 0.9, "min_samples": 20}})
    h.step(0, obs(comp=(10, 0, 0)))                    # only 10 turns: no decision
    assert h.states() == {}
    h.step(1, obs(comp=(100, 95, 0)))                  # 95 %
    assert h.states() == {}
    h.step(2, obs(comp=(100, 95, 10)))                 # 85 %: 10 completed turns drew a thumbs-down
    assert h.states() == {"turn_completion|n:1": "firing"}
    (b,) = h.hook.bodies("firing")
    assert b["alerts"][0]["labels"]["alertname"] == "SeekwatchTurnCompletionLow"
    assert "85.0%" in b["alerts"][0]["annotations"]["description"]


def test_gpu_per_gpu(harness):
    h = harness()
    h.step(0, obs(gpu={"0": 0.95, "1": 0.3}))
    assert h.states() == {"gpu_utilization|n:1|gpu=0": "firing"}
    assert h.hook.bodies("firing")[0]["alerts"][0]["labels"]["gpu"] == "0"


def test_scaling_recommendation_and_info_alert(harness):
    h = harness(rules={"scaling": {"capacity": 10, "high": 0.8, "low": 0.3, "for": "0s"}})
    h.step(0, obs(node="a:1", running=9), obs(node="b:1", running=9))
    assert h.states() == {"scaling|fleet|direction=up": "firing"}
    reg = h.d.metrics.registry
    assert reg.get_sample_value("seekwatch_alertd_scaling_recommendation_instances") == 2
    assert reg.get_sample_value("seekwatch_alertd_fleet_load_ratio") == pytest.approx(0.9)
    (b,) = h.hook.bodies("firing")
    a = b["alerts"][0]
    assert a["labels"]["severity"] == "info" and "建议扩容 +2" in a["annotations"]["description"]
    h.step(1, obs(node="a:1", running=5), obs(node="b:1", running=5))
    assert h.states() == {}
    assert reg.get_sample_value("seekwatch_alertd_scaling_recommendation_instances") == 0
    h.step(2, obs(node="a:1", running=1), obs(node="b:1", running=1))
    assert h.states() == {"scaling|fleet|direction=down": "firing"}
    assert reg.get_sample_value("seekwatch_alertd_scaling_recommendation_instances") == -1
    h.step(3, obs(node="a:1", running=1))                 # one node left: min_instances 1, hold
    assert reg.get_sample_value("seekwatch_alertd_scaling_recommendation_instances") == 0


def test_silence_from_cli_with_expiry(harness):
    h = harness(rules={"p99_latency": {"for": "0s"}})
    r = subprocess.run(seekwatch_cmd("alertd", "--config", str(h.cfg_path), "silence", "add", "--rule", "p99_latency",
                                     "--node", "n:*", "--duration", "2s", "--comment", "deploying"),
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "silence 1 added" in r.stdout
    r = subprocess.run(seekwatch_cmd("alertd", "silence", "list", "--config", str(h.cfg_path)),
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "deploying" in r.stdout and "p99_latency" in r.stdout
    now = time.time()
    h.t0 = now
    h.step(0, obs(latency=0.9))
    assert h.states() == {"p99_latency|n:1": "firing"} and h.hook.bodies() == []   # silenced
    h.step(3, obs(latency=0.9))                                                     # silence expired
    assert len(h.hook.bodies("firing")) == 1


def test_silence_expire_command(harness):
    h = harness(rules={"p99_latency": {"for": "0s"}})
    sid = h.d.store.add_silence({"rule": "p99_latency"}, 3600)
    r = subprocess.run(seekwatch_cmd("alertd", "silence", "expire", str(sid), "--config", str(h.cfg_path)),
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"silence {sid} expired" in r.stdout
    h.t0 = time.time()
    h.step(0, obs(latency=0.9))
    assert len(h.hook.bodies("firing")) == 1
    r = subprocess.run(seekwatch_cmd("alertd", "status", "--config", str(h.cfg_path)),
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "firing" in r.stdout and "p99_latency|n:1" in r.stdout and "outbox: sent 1" in r.stdout


def test_history_is_pruned_but_open_alerts_are_kept(harness):
    h = harness(history_retention="10s", rules={"p99_latency": {"for": "0s"}, "scaling": None})
    h.step(0, obs(latency=0.9), obs(node="m:1", latency=0.9))
    h.step(1, obs(latency=0.9), obs(node="m:1", latency=0.1))
    assert len(h.d.store.events()) == 5 and len(h.d.store.outbox("sent")) == 3
    assert h.d.store.prune(h.t0 + 5) == 8
    assert h.d.store.events() == [] and h.d.store.outbox() == []
    assert h.states() == {"p99_latency|n:1": "firing"}
    h.step(20, obs(latency=0.1), obs(node="m:1", latency=0.1))      # still resolves with its notice
    assert [b["status"] for b in h.hook.bodies()][-1] == "resolved"


def test_overrides_are_checked(tmp_path):
    from contracts.config import ConfigError

    cfg = load_config(None, overrides={"nodes": ["http://10.1.1.1:8000/metrics"], "rules": {"p99_latency": {"threshold_ms": 800}}})
    assert cfg.nodes == ["http://10.1.1.1:8000/metrics"] and cfg.rules["p99_latency"]["threshold_ms"] == 800
    assert cfg.rules["p99_latency"]["window"] == 300
    with pytest.raises(ConfigError):
        load_config(None, overrides={"evaluation_interval": "soon"})


def test_events_record_a_pending_alert_that_cleared(harness):
    h = harness(rules={"p99_latency": {"for": "3s"}, "scaling": None})
    h.step(0, obs(latency=0.9))
    h.step(1, obs(latency=0.1))
    assert [e["event"] for e in reversed(h.d.store.events())] == ["pending", "inactive"]


def test_partial_window_can_confirm_but_not_clear(harness):
    """Right after a restart the direct-scrape history is shorter than the window: a firing
    completion alert must not resolve on a handful of good turns (then re-fire: a duplicate)."""
    h = harness(rules={"completion_rate": {"min_samples": 20}, "scaling": None})
    h.step(0, obs(dial=(100, 50)))
    assert h.states() == {"completion_rate|n:1": "firing"}
    few = obs(dial=(3, 3))
    few.partial.add("dialogues")
    h.step(1, few)
    assert h.states() == {"completion_rate|n:1": "firing"}
    bad = obs(dial=(30, 10), latency=0.9)
    bad.partial.update({"dialogues", "latency"})
    h.step(2, bad)                                   # partial data may still confirm / fire
    assert h.states()["p99_latency|n:1"] in ("pending", "firing")
    h.step(3, obs(dial=(100, 99)))                   # whole window, good: resolves
    assert "completion_rate|n:1" not in h.states()
    assert len(h.hook.bodies("resolved")) == 1 and len([b for b in h.hook.bodies("firing")
                                                        if b["alerts"][0]["labels"]["rule"] == "completion_rate"]) == 1


def test_scrape_marks_short_history_partial(tmp_path):
    from monitor.alerting.scrape import Sample, observe_static

    cfg = load_config(fast_config(tmp_path, nodes=["http://n:1/metrics"]))      # 8 s windows, 1 s interval
    inf = math.inf
    mk = lambda t, n: ("http://n:1/metrics", Sample(t, {0.5: n, inf: n}, {"completed": n}, 0.0, {}, 1.0))
    (o,) = observe_static(cfg, [mk(0, 0), mk(1, 5), mk(2, 10)], now=2)
    assert o.partial == {"latency", "completion", "dialogues"}
    (o,) = observe_static(cfg, [mk(t, t) for t in range(0, 12)], now=11)
    assert o.partial == set()


def test_end_to_end_p99_rule_beside_the_ttft_one(harness):
    """The matrix's P99 is TTFT by default; the config can enable the end-to-end P99 rule too."""
    h = harness(rules={"p99_latency": {"for": "0s"}, "p99_e2e_latency": {"enabled": True, "threshold_ms": 3000, "for": "0s"}})
    o = obs(latency=0.2)
    o.latency_e2e = 4.2
    h.step(0, o)
    assert h.states() == {"p99_e2e_latency|n:1": "firing"}      # TTFT 200 ms is fine, e2e 4.2 s is not
    (b,) = h.hook.bodies("firing")
    a = b["alerts"][0]
    assert a["labels"]["alertname"] == "SeekwatchE2eP99LatencyHigh"
    assert "端到端延迟 P99 = 4200 ms" in a["annotations"]["description"] and a["annotations"]["metric"] == "e2e"


def test_scrape_reads_e2e_buckets_only_when_the_rule_is_on(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from inference.metrics import NodeMetrics
    from monitor.alerting.scrape import observe_static, parse_exposition

    reg = CollectorRegistry()
    nm = NodeMetrics(reg)
    text0 = generate_latest(reg).decode()
    for _ in range(10):
        nm.observe_turn("completed", 4.0, 0.1, 0.01, 0.0, 10, 10)
    text1 = generate_latest(reg).decode()
    cfg = load_config(fast_config(tmp_path, nodes=["http://n:1/metrics"],
                                  rules={"p99_e2e_latency": {"enabled": True, "window": "8s"}}))
    s0, s1 = (parse_exposition(t, "seekwatch_time_to_first_token_seconds", at, e2e=True) for t, at in ((text0, 0), (text1, 1)))
    (o,) = observe_static(cfg, [("http://n:1/metrics", s0), ("http://n:1/metrics", s1)], now=1)
    assert 3.0 < o.latency_e2e <= 5.0 and 0.075 < o.latency <= 0.1
    assert parse_exposition(text1, "seekwatch_time_to_first_token_seconds", 1).e2e_buckets == {}
