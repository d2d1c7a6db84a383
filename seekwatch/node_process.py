"""Start ``seekwatch serve`` as a child process and wait until it is ready.

Used by the tests and the benchmarks, so both run the node
exactly as users start it (``python -m seekwatch serve``), with the real HTTP stack and
shutdown. Starting, readiness and stopping go through :mod:`contracts.supervisor`, like the
demo's parts and the log store.
"""
from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from contracts.supervisor import NotReady, ProcessExited, ProcessSpec, Supervised, free_port, start

if TYPE_CHECKING:  # pragma: no cover
    import ssl
    import subprocess

__all__ = ["NodeProcess", "free_port", "start_node"]


@dataclass
class NodeProcess:
    """A running ``seekwatch serve`` and where to reach it."""

    process: Supervised
    port: int
    log_dir: Path
    output: Path
    args: list[str] = field(default_factory=list)

    @property
    def proc(self) -> "subprocess.Popen":
        return self.process.proc

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base(self) -> str:
        return self.base_url + "/v1"

    def readyz(self) -> dict:
        return httpx.get(self.base_url + "/readyz", timeout=5).json()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """``sig`` (SIGTERM: a clean shutdown), SIGKILL after ``timeout`` s; the exit status."""
        return self.process.stop(grace=timeout, sig=sig)


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
    spec = ProcessSpec(
        name="node", output=output, grace=20, cpus=frozenset(cpus) if cpus else None,
        argv=[sys.executable, "-m", "seekwatch", "serve", "--port", str(port), "--log-dir", str(log_dir), *args],
        env={"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})})
    node = NodeProcess(start(spec), port, log_dir, output, list(args))
    if isinstance(ready_verify, str):
        import ssl

        ready_verify = ssl.create_default_context(cafile=ready_verify)
    url = f"{ready_scheme}://127.0.0.1:{port}/readyz"

    def ready() -> bool:
        try:
            return httpx.get(url, timeout=2, verify=ready_verify, headers=ready_headers).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        node.process.wait_ready(ready, ready_timeout, what="ready (/readyz)")
    except ProcessExited as exc:
        raise RuntimeError(str(exc)) from None
    except NotReady as exc:
        node.stop(signal.SIGKILL)
        raise TimeoutError(str(exc)) from None
    return node
