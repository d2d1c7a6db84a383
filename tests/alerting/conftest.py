"""Helpers for the alerting tests: a real HTTP receiver that records what chat tools would get,
config writing, and running alertd in a thread or as a real process."""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from contracts.supervisor import ProcessSpec, Supervised, start
from tests.fixtures.ports import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Received:
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    t: float


def _accepted(text: str) -> bool:
    try:
        body = json.loads(text)
    except ValueError:
        return True
    if isinstance(body, dict):
        for k in ("errcode", "code", "StatusCode"):
            if k in body and body[k] != 0:
                return False
    return True


class Recorder:
    """A loopback webhook endpoint. ``reply`` decides the answer (status, body) per request;
    ``fail_first`` answers 503 to that many requests first."""

    def __init__(self, reply: Callable[[Received], tuple[int, str]] | None = None, fail_first: int = 0,
                 port: int | None = None):
        self.requests: list[Received] = []        # accepted ones (what the chat would show)
        self.all_requests: list[Received] = []
        self.attempts = 0
        self.fail_first = fail_first
        self.reply = reply or (lambda r: (200, '{"errcode": 0, "errmsg": "ok", "code": 0}'))
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                path, _, query = self.path.partition("?")
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                rec = Received(path, query, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                with outer.lock:
                    outer.attempts += 1
                    failing = outer.attempts <= outer.fail_first
                    status, text = (503, "down for maintenance") if failing else outer.reply(rec)
                    outer.all_requests.append(rec)
                    if 200 <= status < 300 and not failing and _accepted(text):
                        outer.requests.append(rec)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.port = port or free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def bodies(self, status: str | None = None) -> list[Any]:
        with self.lock:
            out = [r.body for r in self.requests]
        if status:
            out = [b for b in out if b.get("status") == status]
        return out

    def wait_for(self, pred: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(step)
        return pred()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    made: list[Recorder] = []

    def make(**kw: Any) -> Recorder:
        r = Recorder(**kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def fast_config(tmp_path: Path, **over: Any) -> Path:
    """A config with second-scale windows, written to tmp_path/alerts.yaml."""
    cfg: dict[str, Any] = {
        "evaluation_interval": "1s",
        "scrape_timeout": "2s",
        "state_path": str(tmp_path / "alertd.sqlite"),
        "repeat_interval": "1h",
        "dashboard_url": "http://127.0.0.1:8501",
        "rules": {
            "p99_latency": {"threshold_ms": 500, "metric": "ttft", "window": "8s", "for": "2s"},
            "gpu_utilization": {"threshold": 0.9, "for": "3s"},
            "completion_rate": {"threshold": 0.9, "window": "8s", "min_samples": 5, "for": "0s"},
            "turn_completion": {"enabled": True, "threshold": 0.9, "window": "8s", "min_samples": 5, "for": "0s"},
            "no_data": {"for": "2s"},
            "scaling": {"window": "3s", "for": "0s", "capacity": 10},
        },
        "delivery": {"backoff": "200ms", "max_backoff": "1s", "max_attempts": 6, "timeout": "2s"},
    }
    for k, v in over.items():
        if k == "rules":
            for name, r in v.items():
                if r is None:
                    cfg["rules"][name] = {"enabled": False}
                else:
                    cfg["rules"][name] = {**cfg["rules"].get(name, {}), **r}
        else:
            cfg[k] = v
    p = tmp_path / "alerts.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return p


class ThreadedAlertd:
    """alertd in a thread of the test process (same code path as the CLI's run loop)."""

    def __init__(self, config_path: Path):
        from monitor.alerting.config import load_config
        from monitor.alerting.daemon import Alertd

        self.cfg = load_config(config_path)
        self.d = Alertd(self.cfg)
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self.d.run, args=(self.stop_ev,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_ev.set()
        self.thread.join(10)
        self.d.close()


@pytest.fixture
def run_alertd():
    made: list[ThreadedAlertd] = []

    def start(config_path: Path) -> ThreadedAlertd:
        t = ThreadedAlertd(config_path)
        made.append(t)
        return t

    yield start
    for t in made:
        t.stop()


class Driver:
    """Keeps producing turns on a MetricsNode at a given TTFT until stopped."""

    def __init__(self, node, ttft: float, status: str = "completed", per_s: int = 10):
        self.node, self.ttft, self.status, self.per_s = node, ttft, status, per_s
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop_ev.is_set():
            self.node.turn(self.ttft, self.status)
            self.stop_ev.wait(1 / self.per_s)

    def stop(self):
        self.stop_ev.set()
        self.t.join(2)


def seekwatch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "seekwatch", *args]


def start_alertd_process(config_path: Path, log_path: Path) -> Supervised:
    """``seekwatch alertd`` in a session of its own, output appended to ``log_path`` (the one
    process supervisor, contracts.supervisor: ``.stop()`` ends it and anything it started)."""
    return start(ProcessSpec(name="alertd", argv=seekwatch_cmd("alertd", "--config", str(config_path)), cwd=REPO,
                             env={"PYTHONUNBUFFERED": "1"}, output=log_path, grace=10.0))
