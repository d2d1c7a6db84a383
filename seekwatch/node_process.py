"""Start ``seekwatch serve`` as a child process and wait until it is ready.

Shared by the tests, the benchmarks and the demo, so all of them run the node exactly as
users start it (``python -m seekwatch serve``), with the real HTTP stack and shutdown.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import ssl

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class NodeProcess:
    """A running ``seekwatch serve`` and where to reach it."""

    proc: subprocess.Popen
    port: int
    log_dir: Path
    output: Path
    args: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base(self) -> str:
        return self.base_url + "/v1"

    def readyz(self) -> dict:
        return httpx.get(self.base_url + "/readyz", timeout=5).json()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_node(tmp: Path, *args: str, ready_timeout: float = 120, env: dict | None = None,
               ready_scheme: str = "http", ready_verify: "bool | str | ssl.SSLContext" = True,
               ready_headers: dict | None = None, cpus: "set[int] | None" = None) -> NodeProcess:
    """Start a node with ``args`` and wait until /readyz says ready (over ``ready_scheme``,
    checking the certificate against ``ready_verify``, sending ``ready_headers``).

    ``cpus`` pins the node, all its threads included, to those CPUs (benchmarks: a node
    and its load generator on separate cores measure the node, not their contention)."""
    port = free_port()
    log_dir = tmp / f"node-{port}-log"
    output = tmp / f"node-{port}.out"
    cmd = [sys.executable, "-m", "seekwatch", "serve", "--port", str(port), "--log-dir", str(log_dir), *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    with open(output, "wb") as out:
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, preexec_fn=pin)
    node = NodeProcess(proc, port, log_dir, output, list(args))
    if isinstance(ready_verify, str):
        import ssl

        ready_verify = ssl.create_default_context(cafile=ready_verify)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode}:\n{output.read_text(errors='replace')[-3000:]}")
        try:
            url = f"{ready_scheme}://127.0.0.1:{port}/readyz"
            if httpx.get(url, timeout=2, verify=ready_verify, headers=ready_headers).status_code == 200:
                return node
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    node.stop(signal.SIGKILL)
    raise TimeoutError(f"node not ready in {ready_timeout}s:\n{output.read_text(errors='replace')[-3000:]}")
