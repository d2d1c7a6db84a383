"""`seekwatch rules export`, checked by the real promtool and amtool; deploy/ files in sync."""
from __future__ import annotations

import shutil
import subprocess

import yaml

from .conftest import REPO, seekwatch_cmd

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
# scripts/setup.d/20-debian.sh installs them; a missing tool is a failed setup, not a skip.
assert PROMTOOL and AMTOOL, "promtool/amtool missing: run make test (Debian prometheus, prometheus-alertmanager)"


def export(*args: str, cwd=REPO) -> str:
    r = subprocess.run(seekwatch_cmd("rules", "export", *args), cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_prometheus_rules_pass_promtool_check_and_unit_tests(tmp_path):
    text = export("--format", "prometheus")
    rules = yaml.safe_load(text)
    names = [r.get("alert") or r.get("record") for g in rules["groups"] for r in g["rules"]]
    for alert in ("SeekwatchP99LatencyHigh", "SeekwatchGpuUtilizationHigh", "SeekwatchCompletionRateLow",
                  "SeekwatchNoData", "SeekwatchScalingRecommended", "seekwatch:scaling_recommendation:instances"):
        assert alert in names
    p = tmp_path / "rules.yml"
    p.write_text(text)
    r = subprocess.run([PROMTOOL, "check", "rules", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # the committed copy is exactly what export prints, so the unit tests below test the export
    assert (REPO / "deploy/prometheus/rules.yml").read_text() == text
    r = subprocess.run([PROMTOOL, "test", "rules", "deploy/prometheus/tests/rules_test.yml"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_custom_thresholds_change_the_exported_rules(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text("rules:\n  p99_latency: {threshold_ms: 800, metric: e2e, window: 10m, for: 2m}\n  scaling: {enabled: false}\n")
    text = export("--format", "prometheus", "--config", str(cfg))
    assert "seekwatch:request_duration_seconds:p99_10m > 0.8" in text and "for: 2m" in text
    assert "Scaling" not in text and "SeekwatchE2eP99LatencyHigh" not in text
    p = tmp_path / "r.yml"
    p.write_text(text)
    assert subprocess.run([PROMTOOL, "check", "rules", str(p)], capture_output=True).returncode == 0


def test_alertmanager_config_passes_amtool(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text(
        "repeat_interval: 2h\nreceivers:\n"
        "  - {type: slack, url: 'https://hooks.slack.com/services/T0/B0/X'}\n"
        "  - {type: webhook, name: pager, url: 'http://127.0.0.1:9000/x', severities: [critical]}\n"
        "  - {type: wecom, url: 'https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k'}\n")
    text = export("--format", "alertmanager", "--config", str(cfg))
    am = yaml.safe_load(text)
    assert am["route"]["repeat_interval"] == "2h"
    assert [r["receiver"] for r in am["route"]["routes"]] == ["slack-0", "pager"]
    assert "wecom" in text.split("global:")[0]           # explained in a comment, not silently dropped
    p = tmp_path / "alertmanager.yml"
    p.write_text(text)
    r = subprocess.run([AMTOOL, "check-config", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_deploy_files_are_valid_and_in_sync():
    r = subprocess.run([PROMTOOL, "check", "config", "deploy/prometheus/prometheus.yml"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([AMTOOL, "check-config", "deploy/alertmanager/alertmanager.yml"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    text = export("--format", "alertmanager", "--config", "alertd-receivers.yaml", cwd=REPO / "deploy/alertmanager")
    assert (REPO / "deploy/alertmanager/alertmanager.yml").read_text() == text


def test_exported_rules_run_in_a_real_prometheus_and_alertmanager(tmp_path, metrics_node, prometheus_server,
                                                                  alertmanager_server, recorder):
    """The exported rules fire in a real Prometheus and reach, through the exported Alertmanager
    route, a generic webhook directly and a DingTalk robot through alertd's bridge (signed, bilingual)."""
    import signal
    import time

    from tests.fixtures.ports import free_port, wait_for_port

    from .conftest import start_alertd_process
    from .test_receivers import SECRET, dingtalk_reply

    node = metrics_node()
    hook = recorder()
    ding = recorder(reply=dingtalk_reply)
    bridge_port = free_port()
    receivers = (f"receivers:\n  - {{type: webhook, name: hook, url: '{hook.url}/am'}}\n"
                 f"  - {{type: dingtalk, name: ops-dt, url: '{ding.url}/robot/send?access_token=t', secret: {SECRET}}}\n")
    cfg = tmp_path / "a.yaml"
    cfg.write_text(
        "evaluation_interval: 1s\n"
        f"alertmanager_listen: 127.0.0.1:{bridge_port}\n"
        f"state_path: {tmp_path / 'alertd.sqlite'}\n"
        "rules:\n  p99_latency: {window: 5s, for: 1s}\n  completion_rate: {enabled: false}\n"
        "  scaling: {enabled: false}\n  gpu_utilization: {enabled: false}\n  no_data: {enabled: false}\n" + receivers)
    rules = tmp_path / "rules.yml"
    rules.write_text(export("--format", "prometheus", "--config", str(cfg)))
    am_text = export("--format", "alertmanager", "--config", str(cfg)).replace("group_wait: 30s", "group_wait: 1s")
    assert f"http://127.0.0.1:{bridge_port}/alertmanager/ops-dt" in am_text
    # alertd runs only as the bridge here: its own rules are off, so every DingTalk message came via Alertmanager
    bridge_cfg = tmp_path / "bridge.yaml"
    bridge_cfg.write_text(
        f"nodes: ['{node.url}']\nevaluation_interval: 1s\nalertmanager_listen: 127.0.0.1:{bridge_port}\n"
        f"state_path: {tmp_path / 'alertd.sqlite'}\n"
        "rules:\n  p99_latency: {enabled: false}\n  completion_rate: {enabled: false}\n  scaling: {enabled: false}\n"
        "  gpu_utilization: {enabled: false}\n  no_data: {enabled: false}\n" + receivers)
    proc = start_alertd_process(bridge_cfg, tmp_path / "alertd.log")
    try:
        wait_for_port(bridge_port, timeout=30)
        am = alertmanager_server(am_text)
        prometheus_server([node.target], scrape_interval="1s", evaluation_interval="1s",
                          rule_files=[rules], alertmanagers=[f"127.0.0.1:{am.port}"])
        deadline = time.time() + 40
        while time.time() < deadline and not (hook.bodies("firing") and ding.requests):
            node.turn(0.9, n=5)
            time.sleep(0.5)
        body = hook.bodies("firing")[0]
        assert body["alerts"][0]["labels"]["alertname"] == "SeekwatchP99LatencyHigh"
        assert body["alerts"][0]["labels"]["instance"] == node.target
        assert "P99 延迟过高 / P99 latency high" in body["alerts"][0]["annotations"]["summary"]
        text = ding.requests[0].body["markdown"]["text"]      # accepted => signature verified
        for needle in ("P99 延迟过高 / P99 latency high", node.target, "threshold > 500 ms", "开始于 Since"):
            assert needle in text, (needle, text)
        assert " ms" in text.split("P99 time to first token over 5s = ")[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    assert "bridged" in (tmp_path / "alertd.log").read_text()


def test_end_to_end_p99_rule_exports_beside_the_ttft_one(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text("rules:\n  p99_e2e_latency: {enabled: true, threshold_ms: 3000}\n  turn_completion: {enabled: true}\n")
    text = export("--format", "prometheus", "--config", str(cfg))
    assert "seekwatch:time_to_first_token_seconds:p99_5m > 0.5" in text
    assert "seekwatch:request_duration_seconds:p99_5m > 3" in text and "SeekwatchE2eP99LatencyHigh" in text
    assert "seekwatch:turn_completion_rate:15m < 0.9" in text and "SeekwatchTurnCompletionLow" in text
    p = tmp_path / "r.yml"
    p.write_text(text)
    r = subprocess.run([PROMTOOL, "check", "rules", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_rule_has_one_alertname():
    """The rules module owns both the rule names and their Alertmanager names: a rule added
    without its ``alertname`` would reach the webhook and the exported rules as a raw key."""
    from monitor.alerting.rules import ALERTNAMES, RULE_NAMES

    assert list(ALERTNAMES) == list(RULE_NAMES)
    assert len(set(ALERTNAMES.values())) == len(ALERTNAMES)
