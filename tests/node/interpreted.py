"""Run a check under Triton's interpreter in a fresh Python process.

Why a process: ``TRITON_INTERPRET`` is read when Triton is imported, and the kernels that
replace a function process-wide (the rotary embedding) must not leak into other tests. The
check's code starts with the environment set and the repository on ``sys.path``; it gets
``args`` as ``sys.argv[1:]`` and prints one JSON object as its last line.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PREAMBLE = f"""import os, sys
os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, {str(ROOT)!r})
"""


def run_json(code: str, *args: str, timeout: float = 600) -> dict:
    out = subprocess.run([sys.executable, "-c", PREAMBLE + code, *args], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
