"""The README cannot drift from the code: its quickstart commands are extracted and run as
written (the demo for a short scripted duration; ``make test`` is what CI itself runs)."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text("utf-8")
    block = re.search(r"<!-- quickstart -->\s*```bash\n(.*?)```\s*<!-- /quickstart -->", text, re.S)
    assert block, "README.md lost its quickstart block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.split("#", 1)[0].strip()]


def test_quickstart_has_the_two_commands_and_ci_runs_the_test_one():
    cmds = quickstart_commands()
    assert cmds == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), ".ci/run must run exactly the README's test command"


def test_readme_demo_command_runs_as_written(tmp_path):
    """``make demo`` exactly as the README gives it, with ``DEMO_ARGS`` asking for a short
    scripted run; it must set up, run the whole stack and exit 0."""
    demo = quickstart_commands()[0]
    env = {**os.environ, "DEMO_ARGS": "--duration 25", "PYTHONUNBUFFERED": "1"}
    env.pop("DISPLAY", None)
    proc = subprocess.Popen(shlex.split(demo), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError("make demo did not finish:\n" + out[-3000:])
    assert proc.returncode == 0, out[-3000:]
    assert "http://127.0.0.1" in out  # it printed the URLs of what it started
