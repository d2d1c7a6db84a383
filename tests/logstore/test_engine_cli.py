"""``seekwatch search-engine start`` runs the bundled OpenSearch in the foreground, prints its
URL and stops cleanly on SIGTERM; the CLI modules import nothing heavy."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from contracts.supervisor import ProcessSpec, start
from tests.fixtures.log_store import ensure_log_store_built
from tests.logstore.conftest import wait_until


def test_cli_modules_import_light():
    code = ("import sys, argparse\n"
            "from monitor.logstore import ship_cli, setup_cli, launcher_cli\n"
            "sub = argparse.ArgumentParser().add_subparsers()\n"
            "[m.add_parser(sub, n, 'x') for n, m in (('ship', ship_cli), ('es-setup', setup_cli), ('search-engine', launcher_cli))]\n"
            "heavy = [m for m in ('httpx', 'numpy', 'torch', 'jsonschema') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("cmd", [["search-engine", "--help"], ["search-engine", "start", "--help"],
                                 ["ship", "--help"], ["es-setup", "--help"]])
def test_help(cmd):
    out = subprocess.run([sys.executable, "-m", "seekwatch", *cmd], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "usage:" in out.stdout


def test_bad_port_is_one_line_exit_2():
    out = subprocess.run([sys.executable, "-m", "seekwatch", "search-engine", "start", "--port", "70000"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_search_engine_start_prints_url_and_stops_cleanly(tmp_path):
    ensure_log_store_built()
    proc = start(ProcessSpec(name="seekwatch search-engine",
                             argv=[sys.executable, "-m", "seekwatch", "search-engine", "start", "--port", "0",
                                   "--data", str(tmp_path / "engine"), "--heap", "384m", "--setup"],
                             output=tmp_path / "launcher.err", pipe_stdout=True, grace=60.0))
    lines = []
    try:
        def ready():
            line = proc.proc.stdout.readline().decode()
            if line:
                lines.append(line)
            return any("data stream seekwatch-feedback" in l for l in lines) or proc.poll() is not None
        wait_until(ready, 90, interval=0, what="engine up")
        assert lines[0].startswith("log store listening on http://127.0.0.1:"), lines
        url = lines[0].split()[4]
        with urllib.request.urlopen(url + "/") as resp:
            assert json.load(resp)["version"]["distribution"] == "opensearch"
        returncode = proc.stop()  # SIGTERM, then up to 60 s for a clean shutdown
        out = proc.proc.stdout.read().decode()
    finally:
        proc.kill()
    assert returncode == 0, proc.tail()
    assert "log store stopped" in out
    # the node released its lock: a second start on the same data directory works
    assert not (tmp_path / "engine" / "engine.url").exists()
