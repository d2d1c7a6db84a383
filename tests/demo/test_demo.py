"""``seekwatch demo`` end to end, as a newcomer runs it: it makes the model, starts the node,
alertd and the dashboard, drives healthy traffic with readable replies, stages one load
spike whose P99 alert fires and resolves, and stops everything — at the end of
``--duration``, on Ctrl-C and on SIGTERM — leaving no process behind (every descendant
seen while it ran is checked)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from contracts.supervisor import alive as _alive, descendants

ALERT_TITLE = "P99 latency high"
#: the alert as alertd's console receiver prints it (the demo's plan names the title too)
ALERT_FIRING = r"\[alertd\] .*\[严重 CRITICAL\] P99 延迟过高 / P99 latency high"
#: the incident's prompts are pasted sales tables (seekwatch/data/incident.yaml)
INCIDENT_MARK = re.compile(r"^01\. ", re.M)
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"


def _dashboard_body(url: str, want: tuple[str, ...] = ("p99_latency", "请求数 Requests", "完成率 Completion rate")) -> str:
    """The overview page's text, rendered by headless Debian Chromium (Playwright), once it
    holds every text of ``want`` (or after 45 s)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1200})
            page.goto(url + "/", wait_until="domcontentloaded", timeout=60_000)
            # The page reads alertd's state once per render; a render that came before the state
            # file showed the alert is repeated ("no alerts firing" also contains "alerts
            # firing": wait for the rule's name). So is a render read while Streamlit was
            # still drawing it (under load, a text once came without its first row of cards).
            deadline = time.monotonic() + 45
            while True:
                page.wait_for_selector("[data-testid=stMetricValue]", timeout=60_000)
                page.wait_for_function("document.body.innerText.includes('alerts firing')", timeout=30_000)
                body = page.inner_text("body")
                if all(w in body for w in want) or time.monotonic() > deadline:
                    return body
                time.sleep(2)
                page.reload(wait_until="domcontentloaded", timeout=60_000)
        finally:
            browser.close()


class DemoRun:
    """``python -m seekwatch demo ARGS`` in its own session (like a shell job), its output
    collected line by line and its process tree sampled while it runs."""

    def __init__(self, *args: str, cwd=None):
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = str(REPO)  # this checkout, whatever the venv's editable install points at
        self.proc = subprocess.Popen([sys.executable, "-m", "seekwatch", "demo", *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: list[str] = []
        self.seen: set[int] = set()
        self.names: dict[int, str] = {}   # pid -> /proc/PID/comm, as sampled
        self.dashboard_status: int | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _read(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            m = re.search(r"dashboard\s+(http://\S+)", line)
            if m and self.dashboard_status is None:
                try:
                    self.dashboard_status = httpx.get(m.group(1), timeout=10, trust_env=False).status_code
                except httpx.HTTPError as exc:
                    self.dashboard_status = -1
                    self.lines.append(f"(test) dashboard GET failed: {exc}")

    def _sample(self) -> None:
        while self.proc.poll() is None:
            for pid in descendants(self.proc.pid):
                if pid not in self.seen:
                    self.seen.add(pid)
                    try:
                        self.names[pid] = open(f"/proc/{pid}/comm").read().strip()
                    except OSError:
                        pass
            time.sleep(0.5)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.text):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} in the demo's output within {timeout} s:\n{self.text[-4000:]}")

    def finish(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"demo still running after {timeout} s:\n{self.text[-4000:]}")
        self._reader.join(10)
        return rc

    def left_running(self) -> list[str]:
        out = []
        for pid in sorted(self.seen):
            if _alive(pid):
                try:
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()[:150]
                except OSError:
                    cmd = "?"
                out.append(f"{pid} {cmd}")
        return out

    def kill(self) -> None:
        """Test cleanup only: whatever is left of this run's own processes."""
        for pid in [self.proc.pid, *self.seen]:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def demo_runs():
    runs: list[DemoRun] = []

    def start(*args: str, **kw) -> DemoRun:
        r = DemoRun(*args, **kw)
        runs.append(r)
        return r

    yield start
    for r in runs:
        if r.proc.poll() is None or r.left_running():
            r.kill()


class _Webhook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a):  # quiet
        pass


@pytest.fixture
def webhook():
    _Webhook.received = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/alerts", _Webhook.received
    srv.shutdown()
    srv.server_close()


def _chat_records(wd: Path) -> list[dict]:
    recs = [json.loads(x) for f in (wd / "log").glob("*.jsonl") for x in f.read_text().splitlines() if x]
    return [r for r in recs if r.get("event", {}).get("dataset", "seekwatch.session") == "seekwatch.session"
            and "session_id" in r and r.get("request_kind", "chat") == "chat"]


def _support_vocabulary() -> set[str]:
    from inference.tiny_model import corpus_texts, load_corpus

    return {w.lower() for t in corpus_texts(load_corpus()) for w in re.findall(r"[A-Za-z]+", t)}


_TEXT_CHARS = re.compile(r"[\u4e00-\u9fff\u3000-\u303f\uff00-\uffefA-Za-z0-9\s.,;:!?'\"“”‘’()%&/+\-]")


def _readable(text: str) -> bool:
    """Text a person can read: made of Chinese, Latin letters, digits and punctuation (no
    replacement characters, no stray bytes), and its English words are words (the support
    vocabulary), not fragments."""
    if "\ufffd" in text or sum(bool(_TEXT_CHARS.match(c)) for c in text) < 0.98 * len(text):
        return False
    words = re.findall(r"[A-Za-z]+", text)
    vocab = _support_vocabulary()
    return not words or sum(w.lower() in vocab for w in words) >= 0.9 * len(words)


def test_demo_duration_end_to_end(tmp_path, support_model_dir, demo_runs, webhook):
    """The README's path, its timeline shortened: `seekwatch demo --duration 90` with the
    spike at 8 s for 20 s. The model comes from the cache (``support_model_dir`` trained it
    once); healthy turns end on their own with readable text; the spike fires the P99 alert,
    which reaches the console and the webhook and resolves before the end; the alert history
    printed from alertd's state shows both; exit 0 and nothing left running."""
    url, received = webhook
    wd = tmp_path / "demo"
    t0 = time.monotonic()
    run = demo_runs("--duration", "90", "--incident-at", "8", "--incident-duration", "20",
                    "--workdir", str(wd), "--port", "0", "--dashboard-port", "0", "--webhook", url, cwd=tmp_path)
    rc = run.finish(timeout=300)
    took = time.monotonic() - t0
    out = run.text
    assert rc == 0, out[-5000:]
    assert (wd / "model" / "config.json").exists()                 # it made the tiny model…
    assert "trained earlier, from the cache" in out, out[:2000]     # …from the cache, quickly
    assert run.dashboard_status == 200, out[-3000:]                 # the printed URL answered
    node_url = re.search(r"node\s+(http://\S+)", out).group(1)
    # it says what is about to happen, then it happens
    assert "What to expect:" in out and "INCIDENT: load spike starts now" in out and "INCIDENT over" in out
    assert re.search(ALERT_FIRING, out) and re.search(r"\[alertd\] .*RESOLVED\] P99 延迟过高", out)
    p99 = [a for a in received if "p99_latency" in a["groupKey"]]
    assert [a["status"] for a in p99][:1] == ["firing"] and "resolved" in [a["status"] for a in p99], received
    history = out[out.index("alert history"):]
    assert f"{ALERT_TITLE}: firing" in history and f"{ALERT_TITLE}: resolved" in history, history
    assert "nothing left running" in out
    assert run.seen and not run.left_running(), run.left_running()
    with pytest.raises(httpx.HTTPError):
        httpx.get(node_url + "/healthz", timeout=2, trust_env=False)

    recs = _chat_records(wd)
    assert len({r["session_id"] for r in recs}) >= 5
    normal = [r for r in recs if not INCIDENT_MARK.search(r.get("prompt") or "")]
    spike = [r for r in recs if INCIDENT_MARK.search(r.get("prompt") or "")]
    assert len(spike) >= 10 and len(normal) >= 20
    statuses = [r["status"] for r in normal]
    # healthy: replies end on their own (EOS or a client's stop sequence), not at max_tokens
    assert statuses.count("truncated") <= 0.05 * len(statuses), statuses
    assert statuses.count("completed") >= 0.85 * len(statuses), statuses
    # readable: whole characters, real words, no runaway text
    answered = [r["response"] for r in normal if r["status"] == "completed"]
    assert all(0 < len(t) <= 400 for t in answered), max(answered, key=len)
    assert sum(_readable(t) for t in answered) >= 0.95 * len(answered), [t for t in answered if not _readable(t)]
    assert took < 240


def test_demo_ctrl_c_with_prometheus(tmp_path, support_model_dir, demo_runs):
    """Ctrl-C in the terminal (SIGINT to the demo's process group) while traffic runs, with
    the real Prometheus in the stack (alertd evaluates through PromQL): the spike's alert
    shows, on the console and on the dashboard, then everything stops."""
    run = demo_runs("--workdir", str(tmp_path / "demo"), "--model-dir", str(support_model_dir), "--port", "0",
                    "--dashboard-port", "0", "--with-prometheus", "--prometheus-port", "0",
                    "--incident-at", "3", "--incident-duration", "60", cwd=tmp_path)
    run.wait_for(r"Traffic until Ctrl-C", 150)
    assert "PromQL on http://127.0.0.1:" in run.text
    run.wait_for(ALERT_FIRING, 90)
    dash = re.search(r"dashboard\s+(http://\S+)", run.text).group(1)
    if shutil.which(CHROMIUM):
        body = _dashboard_body(dash)
        # the dashboard shows this run's traffic and the alert that fired
        assert "请求数 Requests" in body and "alerts firing" in body and "p99_latency" in body, body[:3000]
        requests = re.search(r"请求数 Requests\s+([\d,]+)", body)
        assert requests and int(requests.group(1).replace(",", "")) > 0, body[:3000]
        # healthy replies: the Overview's turn completion is in the healthy range
        completion = re.search(r"完成率 Completion rate\s+([\d.]+) %", body)
        assert completion and float(completion.group(1)) >= 85.0, body[:3000]
    os.killpg(run.proc.pid, signal.SIGINT)
    rc = run.finish(timeout=60)
    assert rc == 0, run.text[-4000:]
    assert "Ctrl-C: stopping everything" in run.text
    assert run.seen and not run.left_running(), run.left_running()


def test_demo_sigterm_while_starting(tmp_path, tiny_model_dir, demo_runs):
    run = demo_runs("--workdir", str(tmp_path / "demo"), "--model-dir", str(tiny_model_dir), "--port", "0",
                    "--dashboard-port", "0", cwd=tmp_path)
    run.wait_for(r"\[1/4\] model", 60)
    # a second demo in the same work directory refuses to start (shared logs and alert state)
    second = demo_runs("--duration", "5", "--workdir", str(tmp_path / "demo"), "--model-dir", str(tiny_model_dir),
                       "--port", "0", "--dashboard-port", "0", cwd=tmp_path)
    assert second.finish(timeout=60) == 1 and "another seekwatch demo" in second.text, second.text
    assert not second.left_running()
    time.sleep(0.5)  # the node and the dashboard are starting now
    run.proc.send_signal(signal.SIGTERM)
    rc = run.finish(timeout=60)
    assert rc == 0, run.text[-4000:]
    assert "SIGTERM: stopping everything" in run.text
    assert run.seen and not run.left_running(), run.left_running()


@pytest.mark.parametrize("args, needle", [
    (["--duration", "0"], "greater than 0"),
    (["--webhook", "hooks.example"], "not an http(s) URL"),
    (["--port", "70000"], "not a port number"),
    (["--turns", "3", "1"], "MIN is larger than MAX"),
    (["--incident-at", "-5"], "greater than 0"),
    (["--incident-concurrency", "0"], "at least 1"),
])
def test_demo_bad_flags(args, needle):
    r = subprocess.run([sys.executable, "-m", "seekwatch", "demo", *args], capture_output=True, text=True, timeout=60,
                       cwd=REPO)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_demo_with_search_engine(tmp_path, support_model_dir, demo_runs):
    """--with-search-engine: OpenSearch (a JVM in a session of its own), es-setup and the
    shipper join the stack; this run's records reach the engine; the JVM is stopped too."""
    from tests.fixtures.log_store import ensure_log_store_built

    ensure_log_store_built()  # built by scripts/setup.d/30-search-engine.sh; fails loudly if it cannot be
    run = demo_runs("--duration", "12", "--workdir", str(tmp_path / "demo"), "--model-dir", str(support_model_dir),
                    "--port", "0", "--dashboard-port", "0", "--with-search-engine", "--search-engine-port", "0",
                    cwd=tmp_path)
    rc = run.finish(timeout=240)
    assert rc == 0, run.text[-5000:]
    assert re.search(r"search engine: \d+ session records of this run shipped", run.text)
    assert run.dashboard_status == 200
    assert "java" in run.names.values(), run.names        # the engine's JVM was part of the run…
    assert not run.left_running(), run.left_running()     # …and is gone


def test_demo_bad_model_dir_fails_fast(tmp_path, demo_runs):
    run = demo_runs("--duration", "5", "--workdir", str(tmp_path / "demo"), "--model-dir", str(tmp_path / "nope"),
                    "--port", "0", "--dashboard-port", "0", cwd=tmp_path)
    rc = run.finish(timeout=60)
    assert rc == 1 and "no config.json there" in run.text and "FAILED" in run.text, run.text
