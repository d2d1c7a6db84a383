"""Cards and charts carry the alert rules' thresholds: a card over (under) its rule's threshold
names the rule in red, one within it shows only its period delta in grey; the latency and
completion charts draw the threshold as a rule line. Thresholds come from the alert config the
dashboard is given, else the built-in matrix."""
from __future__ import annotations

import json

from dashboards.data.thresholds import Thresholds

from .test_pages import metrics, run


def test_defaults_are_the_matrix():
    th = Thresholds.load()
    assert th.latency("ttft").threshold == 500 and th.latency("e2e") is None      # TTFT P99 by default
    assert th.dialogue.threshold == 0.9 and th.turn is None
    assert th.dialogue.breached(0.0) and not th.dialogue.breached(0.95)
    assert th.latency("ttft").breached(716.0) and not th.latency("ttft").breached(None)


def test_a_given_config_merges_over_the_defaults(tmp_path):
    p = tmp_path / "alerts.yaml"
    p.write_text("rules:\n  p99_latency: {threshold_ms: 800}\n  p99_e2e_latency: {enabled: true, threshold_ms: 3000}\n"
                 "  turn_completion: {enabled: true, threshold: 0.8}\n  completion_rate: {enabled: false}\n")
    th = Thresholds.load(str(p))
    assert th.latency("ttft").threshold == 800 and th.latency("ttft").quantile == 0.99
    assert th.latency("e2e").threshold == 3000 and th.turn.threshold == 0.8 and th.dialogue is None
    bad = Thresholds.load(str(tmp_path / "missing.yaml"))
    assert bad.error and bad.dialogue.threshold == 0.9


def _charts(at):
    """The Vega-Lite specs of the page's charts (AppTest has no typed element for them)."""
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def _has_rule(spec, label_part):
    text = json.dumps(spec, ensure_ascii=False)
    return '"rule"' in text and label_part in text


def test_overview_cards_marked_by_the_default_rules(dash_env, expected):
    m = metrics(run("overview"))
    value, d = m["首字延迟 TTFT P99"]
    assert expected.ttft_p99 > 500 and d == "+ P99 延迟过高 > 500 ms"
    assert "延迟过高" not in (m["首字延迟 TTFT P50"][1] or "")                  # no rule on P50
    assert "延迟过高" not in (m["端到端延迟 E2E P99"][1] or "")                 # e2e rule off by default
    dial = m["对话完成率 Dialogue completion"][1]
    assert (expected.dialogue_completion_rate < 0.9) == (dial == "- 对话完成率过低 < 90 %")


def test_cards_and_rule_lines_follow_the_given_config(dash_env, expected, tmp_path):
    p = tmp_path / "alerts.yaml"
    # thresholds the fixture's numbers sit on the other side of
    ttft_thr = round(expected.ttft_p99) + 50
    e2e_thr = round(expected.e2e_p99) - 50
    p.write_text(f"rules:\n  p99_latency: {{threshold_ms: {ttft_thr}}}\n"
                 f"  p99_e2e_latency: {{enabled: true, threshold_ms: {e2e_thr}}}\n"
                 f"  turn_completion: {{enabled: true, threshold: 0.99}}\n  completion_rate: {{threshold: 0.01}}\n")
    dash_env.setenv("SEEKWATCH_DASHBOARD_ALERTS_CONFIG", str(p))
    m = metrics(run("overview"))
    assert "过高" not in (m["首字延迟 TTFT P99"][1] or "")
    assert m["端到端延迟 E2E P99"][1] == f"+ 端到端 P99 延迟过高 > {e2e_thr} ms"
    assert m["完成率 Completion rate"][1] == "- 轮次完成率过低 < 99 %"
    assert "过低" not in (m["对话完成率 Dialogue completion"][1] or "")

    at = run("latency")
    assert any(_has_rule(s, f"P99 > {ttft_thr} ms") for s in _charts(at))
    at.radio(key="lat_metric").set_value("端到端延迟 End-to-end").run()
    assert "端到端 P99 延迟过高" in metrics(at)["端到端延迟 End-to-end P99"][1]
    assert any(_has_rule(s, f"P99 > {e2e_thr} ms") for s in _charts(at))

    at = run("quality")
    q = metrics(at)
    assert q["轮次完成率 Turn completion"][1] == "- 轮次完成率过低 < 99 %"
    assert any(_has_rule(s, "< 99 %") and _has_rule(s, "< 1 %") for s in _charts(at))
