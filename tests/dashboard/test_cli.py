"""``seekwatch dashboard``: flags, one-line errors with exit 2, the streamlit command it runs."""
from __future__ import annotations

import argparse
import subprocess
import sys

from dashboards import cli


def parse(*argv):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    cli.add_parser(sub, "dashboard", "run the dashboard")
    return p.parse_args(["dashboard", *argv])


def test_command_and_env(tmp_path):
    a = parse("--logs", str(tmp_path), "--node", "http://127.0.0.1:9", "--port", "8999", "--", "--theme.base", "dark")
    cmd = cli.command(a)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("dashboards/app.py")
    assert "8999" in cmd and cmd[-2:] == ["--theme.base", "dark"]
    env = cli.build_env(a, base={"SEEKWATCH_DASHBOARD_URL": "http://stale"})
    assert env["SEEKWATCH_DASHBOARD_LOGS"] == str(tmp_path) and env["SEEKWATCH_DASHBOARD_NODE"] == "http://127.0.0.1:9"
    assert "SEEKWATCH_DASHBOARD_URL" not in env


def _seekwatch(*argv):
    return subprocess.run([sys.executable, "-m", "seekwatch", "dashboard", *argv], capture_output=True, text=True, timeout=60)


def test_bad_flags_one_line_exit_2(tmp_path):
    bad = tmp_path / "cost.yaml"
    bad.write_text("deployment: nope\nmodes: {local: {monthly_usd: 1}}\n")
    for argv in (["--port", "0"], ["--url", "ftp://x"], ["--logs", str(tmp_path / "missing")],
                 ["--cost-config", str(bad)], ["--logs", str(tmp_path), "--url", "http://x"]):
        r = _seekwatch(*argv)
        assert r.returncode == 2, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (argv, r.stderr)


def test_help():
    r = _seekwatch("--help")
    assert r.returncode == 0 and "--prometheus" in r.stdout and "--logs" in r.stdout
