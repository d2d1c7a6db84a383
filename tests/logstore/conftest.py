"""Helpers for the logstore tests (the engine fixture itself is tests/fixtures/log_store.py)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contracts.supervisor import ProcessSpec, Supervised, start

PY = sys.executable


@pytest.fixture(scope="session")
def store(log_store_url):
    from contracts.logstore import StoreClient

    with StoreClient(log_store_url) as client:
        yield client


def tag_query(tag: str) -> dict:
    return {"term": {"host.name": f"node-{tag}"}}


def count_tag(client, tag: str, target: str = "seekwatch-*") -> int:
    client.refresh(target)
    return client.count(target, tag_query(tag))


def ship_cmd(logs: Path, url: str, *extra: str) -> list[str]:
    return [PY, "-m", "seekwatch", "ship", "--logs", str(logs), "--url", url, *extra]


def run_ship(logs: Path, url: str, *extra: str, timeout: float = 120) -> dict:
    """Run ``seekwatch ship --once`` to completion and return its JSON summary."""
    proc = subprocess.run(ship_cmd(logs, url, "--once", "--quiet", *extra), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def checkpoint_offsets(state_dir: Path) -> int:
    try:
        data = json.loads((state_dir / "checkpoints.json").read_text())
    except (FileNotFoundError, ValueError):
        return 0
    return sum(int(f["offset"]) for f in data["files"].values())


def wait_until(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def start_ship(logs: Path, url: str, *extra: str, output: Path, pipe_stdout: bool = False) -> Supervised:
    """``seekwatch ship`` as a long-running child, through the one process supervisor
    (:mod:`contracts.supervisor`): its own session, its stderr (and stdout unless
    ``pipe_stdout``) appended to ``output``, and ``.stop()`` / ``.kill()`` end it and anything
    it started."""
    return start(ProcessSpec(name="seekwatch ship", argv=ship_cmd(logs, url, *extra), output=output,
                             env={"PYTHONUNBUFFERED": "1"}, grace=30.0, pipe_stdout=pipe_stdout))
