"""Config: defaults are the threshold matrix, durations, `--check-config`, one-line errors with exit 2."""
from __future__ import annotations

import subprocess
import sys

import pytest

from contracts.config import ConfigError
from monitor.alerting.config import load_config, node_id
from monitor.alerting.durations import format_duration, parse_duration

from .conftest import REPO, seekwatch_cmd


def test_defaults_are_the_threshold_matrix():
    cfg = load_config(None)
    assert cfg.rules["p99_latency"]["threshold_ms"] == 500 and cfg.rules["p99_latency"]["metric"] == "ttft"
    assert cfg.rules["p99_latency"]["window"] == 300
    assert cfg.rules["gpu_utilization"]["threshold"] == 0.9 and cfg.rules["gpu_utilization"]["for"] == 300
    assert cfg.rules["completion_rate"]["threshold"] == 0.9 and cfg.rules["completion_rate"]["window"] == 900
    assert cfg.rules["completion_rate"]["min_samples"] == 20
    assert cfg.rules["scaling"]["high"] == 0.8 and cfg.rules["scaling"]["low"] == 0.3
    assert cfg.rules["scaling"]["scale_up"] == 2 and cfg.rules["scaling"]["scale_down"] == 1
    assert cfg.evaluation_interval == 15 and cfg.repeat_interval == 4 * 3600
    assert cfg.nodes == ["http://127.0.0.1:8000/metrics"] and cfg.prometheus_url is None and cfg.mode == "scrape"


def test_issue_example_config_is_valid(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("""
nodes: [http://127.0.0.1:8000/metrics]
prometheus_url: null
evaluation_interval: 15s
state_path: ./var/alertd.sqlite
rules:
  p99_latency:     {threshold_ms: 500, metric: ttft, window: 5m, for: 1m}
  gpu_utilization: {threshold: 0.9, for: 5m}
  completion_rate: {threshold: 0.9, window: 15m, min_samples: 20}
receivers:
  - {type: slack, url: https://hooks.example/abc}
  - {type: dingtalk, url: "https://oapi.dingtalk.com/robot/send?access_token=x", secret: SECxx}
  - {type: feishu, url: https://open.feishu.cn/open-apis/bot/v2/hook/x, secret: s}
  - {type: wecom, url: "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k"}
  - {type: webhook, url: http://127.0.0.1:9000/hook}
  - {type: console}
""")
    cfg = load_config(p)
    assert [r["type"] for r in cfg.receivers] == ["slack", "dingtalk", "feishu", "wecom", "webhook", "console"]
    assert cfg.rules["no_data"]["for"] == 120            # merged from the defaults


@pytest.mark.parametrize("text,expected", [
    ("15s", 15), ("5m", 300), ("4h", 14400), ("1h30m", 5400), ("250ms", 0.25), ("2d", 172800), ("0", 0), (90, 90),
])
def test_durations(text, expected):
    assert parse_duration(text) == expected


def test_duration_round_trip():
    for s in (1, 15, 90, 300, 5400, 0.5):
        assert parse_duration(format_duration(s)) == s
    with pytest.raises(ValueError):
        parse_duration("5 minutes")


def test_node_id_is_instance():
    assert node_id("http://10.0.0.5:8000/metrics") == "10.0.0.5:8000"
    assert node_id("https://node.example/metrics") == "node.example:443"


@pytest.mark.parametrize("text,needle", [
    ("evaluation_interval: 5x", "evaluation_interval: '5x' is not valid: expected a duration"),
    ("rules: {p99_latency: {metric: p50}}", "rules.p99_latency.metric"),
    ("rules: {p99_latency: {window: 10s}}", "rules.p99_latency.window"),   # < 2 evaluation intervals
    ("receivers: [{type: dingtalk}]", "receivers.0: 'url' is a required property"),
    ("receivers: [{type: pagerduty, url: http://x}]", "receivers.0.type"),
    ("rules: {scaling: {low: 0.9, high: 0.8}}", "low (0.9) must be below high (0.8)"),
    ("nodes: [localhost:8000]", "nodes.0"),
    ("nope: 1", "'nope' was unexpected"),
    ("nodes: [", "invalid YAML"),
])
def test_bad_config_one_line_exit_2(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text + "\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert needle in str(ei.value)
    r = subprocess.run(seekwatch_cmd("alertd", "--config", str(p)), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and needle in r.stderr and str(p) in r.stderr


def test_check_config_ok_and_missing_file(tmp_path):
    r = subprocess.run(seekwatch_cmd("alertd", "--check-config"), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "ok" in r.stdout and "p99_latency" in r.stdout
    r = subprocess.run(seekwatch_cmd("alertd", "--check-config", str(tmp_path / "none.yaml")), cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no such file" in r.stderr
    r = subprocess.run(seekwatch_cmd("alertd", "--bogus"), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_cli_module_imports_nothing_heavy():
    code = ("import sys, monitor.alerting.cli, monitor.alerting.export_cli; "
            "heavy = [m for m in ('torch', 'transformers', 'httpx', 'prometheus_client', 'yaml', 'jsonschema') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
