"""Bad input: broken YAML config files through the real CLI (``python -m seekwatch …``), for
every command that reads one: alertd's config (``alertd --config``, ``alertd --check-config``,
``rules export --config``), the cost model (``serve --cost-config``, ``dashboard --cost-config``)
and the dashboard's login config (``dashboard --auth-config``). Each gives exactly one line on
stderr naming the file, no traceback, and exit code 2.

The refusal-phrase rules (``contracts/defaults/refusals.yaml``) are read by
``RefusalDetector.from_yaml`` but no command takes a refusals file yet (``inference/quality.py``'s
docstring mentions ``--refusals FILE``, ``seekwatch serve`` has no such flag), so they are
checked through the loader the CLI would call.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from contracts.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]

BROKEN = {
    "syntax": b"rules: [1, 2\n",
    "tab-indent": b"rules:\n\tp99_latency: {}\n",
    "not-a-mapping": b"- a\n- b\n",
    "unknown-key": b"no_such_setting: 1\n",
    "wrong-type": b"modes: 5\nrules: 7\nevaluation_interval: [1]\n",
    "invalid-utf8": b"rules: \xff\xfe\xfd\n",
    "binary": bytes(range(256)),
    "duplicate-anchor-garbage": b"a: *nowhere\n",
}

# each command: argv with {cfg} for the broken file
COMMANDS = {
    "alertd --config": ["alertd", "--config", "{cfg}", "--once"],
    "alertd --check-config": ["alertd", "--check-config", "{cfg}"],
    "rules export --config": ["rules", "export", "--format", "prometheus", "--config", "{cfg}"],
    "dashboard --cost-config": ["dashboard", "--cost-config", "{cfg}", "--insecure-no-auth"],
    "dashboard --auth-config": ["dashboard", "--auth-config", "{cfg}"],
}


def _limit_memory():  # a runaway loader must not eat the shared machine
    resource.setrlimit(resource.RLIMIT_AS, (3 * 1024 ** 3, 3 * 1024 ** 3))


def seekwatch(*argv: str, timeout: float = 60, limit_memory: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seekwatch", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                          preexec_fn=_limit_memory if limit_memory else None)


def assert_one_line_exit_2(r: subprocess.CompletedProcess, cfg: Path) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert str(cfg) in lines[0] or cfg.name in lines[0], lines[0]
    return lines[0]


# every kind of breakage on one command per loader; the commands sharing a loader get a few
CASES = [(c, b) for c in ("alertd --config", "dashboard --cost-config", "dashboard --auth-config") for b in BROKEN] \
    + [(c, b) for c in ("alertd --check-config", "rules export --config") for b in ("syntax", "wrong-type", "binary")]


@pytest.mark.parametrize("command, broken", CASES)
def test_broken_yaml_one_line_exit_2(command, broken, tmp_path):
    cfg = tmp_path / f"{broken}.yaml"
    cfg.write_bytes(BROKEN[broken])
    r = seekwatch(*[a.format(cfg=cfg) for a in COMMANDS[command]])
    assert_one_line_exit_2(r, cfg)


@pytest.mark.parametrize("command", ["alertd --check-config", "dashboard --cost-config", "dashboard --auth-config"])
def test_missing_config_file_one_line_exit_2(command, tmp_path):
    cfg = tmp_path / "nope.yaml"
    r = seekwatch(*[a.format(cfg=cfg) for a in COMMANDS[command]])
    assert_one_line_exit_2(r, cfg)


@pytest.mark.parametrize("broken", ["syntax", "wrong-type", "invalid-utf8"])
def test_serve_broken_cost_config_one_line_exit_2(broken, tiny_model_dir, tmp_path):
    cfg = tmp_path / f"{broken}.yaml"
    cfg.write_bytes(BROKEN[broken])
    r = seekwatch("serve", "--model", str(tiny_model_dir), "--port", "1", "--log-dir", str(tmp_path / "log"),
                  "--cost-config", str(cfg), timeout=120)
    assert_one_line_exit_2(r, cfg)


def _refusal_rules(path):
    from inference.quality import RefusalDetector

    return RefusalDetector.from_yaml(path)


def _request_kinds(path):
    from inference.request_kinds import RequestKinds

    return RequestKinds.from_yaml(path)


@pytest.mark.parametrize("load", [_refusal_rules, _request_kinds], ids=["refusal_rules", "request_kinds"])
@pytest.mark.parametrize("broken", list(BROKEN))
def test_inference_yaml_loader_one_clear_error(load, broken, tmp_path):
    cfg = tmp_path / f"{broken}.yaml"
    cfg.write_bytes(BROKEN[broken])
    with pytest.raises(ConfigError) as e:
        load(cfg)
    msg = str(e.value)
    assert "\n" not in msg.strip() and str(cfg) in msg


# A YAML alias bomb (9 levels of 9 aliases: 387M references) under a key the schema accepts.
def _bomb(key: str) -> bytes:
    names = "abcdefghi"
    lines = ['  - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip(names, names[1:]):
        lines.append(f"  - &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return (f"{key}:\n" + "\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("argv, key", [(["alertd", "--check-config"], "nodes"),
                                       (["dashboard", "--insecure-no-auth", "--cost-config"], "api_prices")])
def test_yaml_alias_bomb_is_refused_quickly(argv, key, tmp_path):
    """Found by this suite: the loader expanded aliases, so this ran > 8 s and ~1 GB before the
    schema check failed; since 42519d4 config files refuse aliases up front."""
    cfg = tmp_path / "bomb.yaml"
    cfg.write_bytes(_bomb(key))
    r = seekwatch(*argv, str(cfg), timeout=8, limit_memory=True)
    line = assert_one_line_exit_2(r, cfg)
    assert "alias" in line.lower()
