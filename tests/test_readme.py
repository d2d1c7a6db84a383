"""The README cannot drift from the code: its quickstart commands are extracted and run as
written (the demo for a short scripted duration; ``make test`` is what CI itself runs)."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from contracts.supervisor import ProcessSpec, start

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
    out_path = tmp_path / "demo.out"
    proc = start(ProcessSpec(name="make demo", argv=shlex.split(demo), cwd=ROOT, output=out_path, grace=60.0,
                             env={"DEMO_ARGS": "--duration 25", "PYTHONUNBUFFERED": "1"}, unset_env=("DISPLAY",)))
    try:
        proc.wait(420)
    except subprocess.TimeoutExpired:
        raise AssertionError("make demo did not finish:\n" + proc.tail(3000)) from None
    finally:
        proc.kill()  # the one supervisor: nothing the demo started outlives the test
    out = out_path.read_text(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    assert "http://127.0.0.1" in out  # it printed the URLs of what it started
