"""``seekwatch demo``: the whole stack on one machine, with nothing else installed.

It makes the tiny model (``./var/demo/model``: DeepSeek-LLM's architecture, trained for a
few minutes on a bundled support corpus the first time, then taken from the cache) if absent,
then starts, each as its own process (``python -m seekwatch ...``) in its own process group:

* a node (``seekwatch serve``) writing session logs to ``./var/demo/log``;
* the dashboard (``seekwatch dashboard``) on those logs;
* alertd (``seekwatch alertd``) with a demo config of short windows, a console receiver and,
  with ``--webhook URL``, an Alertmanager-format webhook;
* optionally Debian's Prometheus scraping the node (``--with-prometheus``; alertd then
  evaluates through PromQL and the dashboard reads GPU series from it) and the bundled
  OpenSearch with ``es-setup`` and ``seekwatch ship`` (``--with-search-engine``; the dashboard
  then reads the log store);

and drives the node with ``seekwatch loadgen``'s conversations in-process: healthy traffic
(turn completion around 93 %), and one incident on purpose. At ``--incident-at`` seconds a
load spike -- ``--incident-concurrency`` customers at once pasting long sales tables
(``seekwatch/data/incident.yaml``) -- queues the node's prefill work and truly pushes TTFT P99
over the 500 ms threshold; the P99 alert fires (console, webhook, dashboard), and resolves
once the spike has been over for a latency window. The demo says what is about to happen.

Ctrl-C or SIGTERM stops everything (traffic, then the parts in reverse order: SIGTERM to each
process group, SIGKILL after a grace period, and any stray descendant too). ``--duration S``
stops after S seconds of traffic and exits 0 when every part came up, stayed up and the node
answered.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from contracts.supervisor import NotReady, ProcessExited, ProcessSpec, Supervised, free_port, port_free, stop_all
from contracts.supervisor import start as start_process

ALERT_MARK = "── seekwatch alert ──"
#: the folder holding the seekwatch, inference, monitor, dashboards and contracts packages
SOURCE_ROOT = Path(__file__).resolve().parent.parent
#: Healthy traffic a laptop CPU serves on the tiny model with answers in well under a second:
#: replies end on their own long before max_tokens, few users stop a reply or rate it down
#: (turn completion around 93 %: ~2 % stopped, ~2 % thumbs-down, ~1-2 % refused answers).
DEMO_TRAFFIC = {"sessions_per_second": 0.5, "turns": [2, 4], "max_tokens": [200, 400], "think_time": [0.5, 2.0],
                "feedback_ratio": 0.08, "negative_ratio": 0.25, "abort_ratio": 0.02}
#: A demo conversation has ended when it has been idle this long (the demo's users think for
#: at most 2 s between turns), so dialogue completion shows within the first minutes instead
#: of after the node's default 5 min. Node and dashboard use the same value.
CONVERSATION_IDLE = "30s"
#: The incident: when, how long, how many customers at once (long prompts, one turn each).
INCIDENT = {"at": 60.0, "duration": 45.0, "concurrency": 48}
INCIDENT_SCENARIOS = Path(__file__).with_name("data") / "incident.yaml"


class DemoError(RuntimeError):
    """A part failed to start or died; the message names it."""


class Interrupted(Exception):
    """Ctrl-C / SIGTERM arrived while starting."""


# --------------------------------------------------------------------------------------------
# processes: the parts as data, started and stopped by the one supervisor (contracts.supervisor)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    """A URL path of a part that answers 200 once it is up."""

    path: str
    what: str
    #: wait --start-timeout, or this many seconds when more
    least: float = 0.0
    #: or exactly this many seconds
    fixed: float | None = None

    def timeout(self, start_timeout: float) -> float:
        return self.fixed if self.fixed is not None else max(start_timeout, self.least)


@dataclass(frozen=True)
class Part:
    """How the demo runs one of its processes."""

    name: str
    #: stop order: tier 0 first (everything that reads the node), then the node (1), then the
    #: search engine (2), which the shipper writes to until it has stopped
    stop_tier: int = 0
    #: seconds between SIGTERM and SIGKILL
    grace: float = 15.0
    #: stdout to a pipe the demo reads (alertd's console notifications)
    pipe_stdout: bool = False
    #: waited for in turn after it starts
    ready: tuple[Ready, ...] = ()


PARTS: dict[str, Part] = {p.name: p for p in (
    Part("make-tiny-model"),
    Part("node", stop_tier=1, grace=20.0, ready=(Ready("/readyz", "model loading"),)),
    Part("search-engine", stop_tier=2, grace=40.0, ready=(Ready("", "search engine", least=180),)),
    Part("prometheus", ready=(Ready("/-/ready", "Prometheus"),)),
    Part("es-setup"),
    Part("ship", grace=15.0),
    Part("alertd", grace=10.0, pipe_stdout=True),
    Part("dashboard", grace=10.0, ready=(Ready("/_stcore/health", "Streamlit", least=120),
                                         Ready("/", "Streamlit page", fixed=30))),
)}
STOP_TIERS = sorted({p.stop_tier for p in PARTS.values()})


def pick_port(preferred: int, what: str, say: Callable[[str], None]) -> int:
    if preferred == 0:
        return free_port()
    if port_free(preferred):
        return preferred
    port = free_port()
    say(f"  port {preferred} is busy: {what} uses {port} instead")
    return port


def spawn(name: str, args: list[str], workdir: Path, *, env: dict[str, str] | None = None) -> Supervised:
    """Start part ``name`` (see :data:`PARTS`) in its own process group (a terminal Ctrl-C
    reaches only the demo, which then stops the parts in order), output to ``workdir/<name>.out``."""
    part = PARTS[name]
    # The parts run the very code this demo runs: its source root first on the path, and the
    # work directory as cwd (``python -m`` puts the cwd first; a checkout there would win).
    path = os.pathsep.join(p for p in (str(SOURCE_ROOT), os.environ.get("PYTHONPATH")) if p)
    return start_process(ProcessSpec(
        name=name, argv=args, output=workdir / f"{name}.out", cwd=workdir, grace=part.grace,
        pipe_stdout=part.pipe_stdout, env={"PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **(env or {})}))


# --------------------------------------------------------------------------------------------
# the demo
# --------------------------------------------------------------------------------------------
def _clock(seconds: float) -> str:
    """Elapsed traffic time as m:ss (what the demo's timeline lines use)."""
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _ms(v: Any) -> str:
    return "–" if v is None else f"{v:.0f} ms"


def _py(*args: str) -> list[str]:
    return [sys.executable, "-m", "seekwatch", *args]


def has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def demo_alert_config(node_url: str, state_path: Path, dashboard_url: str, *, webhook: str | None,
                      prometheus_url: str | None, capacity: int) -> dict[str, Any]:
    """The threshold matrix with demo-sized windows. Latency decides on 30 s (the spike shows
    within seconds and clears half a minute after it ends); completion on minutes and tens of
    samples held for a minute (dialogue: 3 min, 40 ended conversations; turn: 2 min, 60
    turns), so a few unlucky turns in a row on healthy traffic (~93 %) page nobody."""
    receivers: list[dict[str, Any]] = [{"type": "console", "name": "console"}]
    if webhook:
        receivers.append({"type": "webhook", "name": "webhook", "url": webhook})
    cfg: dict[str, Any] = {
        "nodes": [node_url.rstrip("/") + "/metrics"],
        "prometheus_url": prometheus_url,
        "evaluation_interval": "2s",
        "scrape_timeout": "2s",
        "state_path": str(state_path),
        "dashboard_url": dashboard_url,
        "repeat_interval": "10m",
        "rules": {
            "p99_latency": {"window": "30s", "for": "10s"},
            "gpu_utilization": {"for": "30s"},
            "completion_rate": {"window": "3m", "min_samples": 40, "for": "60s"},
            "turn_completion": {"enabled": True, "window": "2m", "min_samples": 60, "for": "60s"},
            "no_data": {"for": "20s"},
            "scaling": {"capacity": capacity, "window": "30s", "for": "30s"},
        },
        "receivers": receivers,
        "delivery": {"max_attempts": 3, "backoff": "1s", "timeout": "5s"},
    }
    return cfg


class Demo:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.workdir = Path(args.workdir).resolve()
        self.children: list[Supervised] = []
        self.stop_event = threading.Event()
        self.signals = 0
        self.out_lock = threading.Lock()
        self.tty = sys.stdout.isatty()
        self.progress_drawn = False
        self.alerts: list[str] = []
        self.failures: list[str] = []
        self.urls: dict[str, str] = {}
        self.gen = None
        self.summary: dict[str, Any] | None = None
        self.node_target = ""
        self.es_baseline = 0
        self.alertd_reader: threading.Thread | None = None
        self.spike_summary: dict[str, Any] | None = None
        self.traffic_started: float | None = None   # wall clock, for the alert history
    # -- output ------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        with self.out_lock:
            try:  # a closed terminal or pipe must not stop the shutdown
                if self.progress_drawn:
                    sys.stdout.write("\r\x1b[2K")
                    self.progress_drawn = False
                sys.stdout.write(text + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):
                pass

    def progress(self, text: str) -> None:
        with self.out_lock:
            try:
                if self.tty:
                    sys.stdout.write("\r\x1b[2K" + text[:200])
                    self.progress_drawn = True
                else:
                    sys.stdout.write(text + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):
                pass

    # -- signals -----------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self.signals += 1
        self.stop_event.set()
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        msg = (f"\nseekwatch demo: {name}: stopping everything… (again to force)\n" if self.signals == 1
               else f"\nseekwatch demo: {name} again: forcing the stop (SIGKILL)\n")
        try:  # written from the handler without the lock (the main thread may hold it)
            os.write(1, msg.encode())
        except OSError:
            pass

    def check_stop(self) -> None:
        if self.stop_event.is_set():
            raise Interrupted()

    # -- helpers -----------------------------------------------------------------------------
    def start(self, name: str, args: list[str], **kw: Any) -> Supervised:
        c = spawn(name, args, self.workdir, **kw)
        self.children.append(c)
        return c

    def wait_ready(self, child: Supervised, base_url: str) -> None:
        """Wait for each of the part's readiness URLs (``PARTS``) in turn."""
        for r in PARTS[child.name].ready:
            self.wait_http(child, base_url + r.path, r.timeout(self.args.start_timeout), r.what)

    def wait_http(self, child: Supervised, url: str, timeout: float, what: str) -> None:
        import httpx

        def answers() -> bool:
            try:
                return httpx.get(url, timeout=2, trust_env=False).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            child.wait_ready(answers, timeout, interval=0.25, sleep=self.stop_event.wait, interrupted=self.check_stop)
        except ProcessExited as exc:
            raise DemoError(str(exc)) from None
        except NotReady:
            raise DemoError(f"{child.name} did not answer {url} within {timeout:.0f} s ({what}); "
                            f"its output ({child.out_path}):\n{child.tail()}") from None

    def run_step(self, name: str, args: list[str], timeout: float) -> None:
        c = self.start(name, args)
        deadline = time.monotonic() + timeout
        while c.running:
            self.check_stop()
            if time.monotonic() > deadline:
                raise DemoError(f"{name} took longer than {timeout:.0f} s; output in {c.out_path}")
            self.stop_event.wait(0.1)
        self.children.remove(c)
        if c.proc.returncode != 0:
            raise DemoError(f"{name} failed with status {c.proc.returncode}:\n{c.tail()}")

    def _read_alertd(self, child: Supervised) -> None:
        """Echo alertd's console notifications (stdout) and remember their titles."""
        stream = child.proc.stdout
        assert stream is not None
        expect_title = False
        with open(child.out_path, "ab") as copy:
            for raw in iter(stream.readline, b""):
                copy.write(raw)
                copy.flush()
                line = raw.decode(errors="replace").rstrip("\n")
                if line.startswith(ALERT_MARK):
                    expect_title = True
                    self.say("")
                    self.say("[alertd] " + line)
                    continue
                if expect_title and line.strip():
                    self.alerts.append(line.strip())
                    expect_title = False
                self.say("[alertd] " + line)

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        started = time.monotonic()
        try:
            self.setup()
            self.traffic()
        except Interrupted:
            pass
        except DemoError as exc:
            self.failures.append(str(exc))
            self.say(f"seekwatch demo: error: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug or an OS error: still stop every part first
            import traceback

            self.failures.append(f"unexpected {type(exc).__name__}: {exc}")
            self.say(traceback.format_exc().rstrip())
        finally:
            self.teardown()
        if self.summary:
            from seekwatch.loadgen import format_summary

            self.say(format_summary(self.summary))
        if self.spike_summary:
            sp = self.spike_summary
            self.say(f"incident (load spike): {sp['turns_sent']} long-prompt turns sent, "
                     f"{sp['turns_answered']} answered; client-side TTFT p50 {_ms(sp['ttft_ms']['p50'])}, "
                     f"p99 {_ms(sp['ttft_ms']['p99'])}")
        self.say("alerts sent to the console: " + (", ".join(dict.fromkeys(self.alerts)) if self.alerts else "none"))
        history = self.alert_history()
        if history:
            self.say("alert history (alertd's state, as on the dashboard's Alerts page):")
            for line in history:
                self.say(line)
        took = time.monotonic() - started
        if self.failures:
            self.say(f"seekwatch demo: FAILED after {took:.0f} s: " + "; ".join(f.splitlines()[0] for f in self.failures))
            return 1
        self.say(f"seekwatch demo: done in {took:.0f} s; every part stopped, nothing left running")
        return 0

    def _lock_workdir(self) -> None:
        """One demo per work directory: two would share the log folder and alertd's state."""
        import fcntl

        self.lock_file = open(self.workdir / ".demo.lock", "a+")
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.lock_file.seek(0)
            other = self.lock_file.read().strip() or "?"
            raise DemoError(f"another seekwatch demo (pid {other}) is running in {self.workdir}; "
                            "stop it or give this one --workdir DIR") from None
        self.lock_file.seek(0)
        self.lock_file.truncate()
        self.lock_file.write(str(os.getpid()))
        self.lock_file.flush()

    def setup(self) -> None:
        args, wd = self.args, self.workdir
        wd.mkdir(parents=True, exist_ok=True)
        self._lock_workdir()
        log_dir = wd / "log"
        log_dir.mkdir(exist_ok=True)
        model = Path(args.model_dir).resolve() if args.model_dir else wd / "model"
        steps = 4 + bool(args.with_prometheus) + bool(args.with_search_engine)
        n = iter(range(1, steps + 1))
        self.say(f"seekwatch demo — the whole stack serving a tiny DeepSeek-architecture support model "
                 f"(files in {wd}; Ctrl-C stops everything)")

        # 1. model
        if args.model_dir:
            if not (model / "config.json").exists():
                raise DemoError(f"--model-dir {model}: no config.json there (not a transformers model folder)")
            self.say(f"  [{next(n)}/{steps}] model      {model}")
        elif not (model / "config.json").exists():
            import shutil

            for stale in [model, *model.parent.glob(model.name + ".partial-*")]:
                shutil.rmtree(stale, ignore_errors=True)  # an interrupted earlier run's leftovers
            t0 = time.monotonic()
            from inference.tiny_model import trained_model_path

            first = not (trained_model_path() / "config.json").exists()
            self.say(f"  [{next(n)}/{steps}] model      making the tiny model in {model} "
                     + ("(training it on the bundled support corpus: a few minutes, once; later runs take it from "
                        f"{trained_model_path().parent}) …" if first else "(trained earlier, from the cache) …"))
            partial = model.with_name(model.name + f".partial-{os.getpid()}")
            self.run_step("make-tiny-model", _py("make-tiny-model", str(partial)), timeout=900)
            os.replace(partial, model)  # only a complete model ever sits at the final path
            self.say(f"                    made in {time.monotonic() - t0:.0f} s")
        else:
            self.say(f"  [{next(n)}/{steps}] model      {model}")

        # 2. node + dashboard (+ search engine), started together, waited for in turn
        node_port = pick_port(args.port, "the node", self.say)
        dash_port = pick_port(args.dashboard_port, "the dashboard", self.say)
        node_url = f"http://127.0.0.1:{node_port}"
        dash_url = f"http://127.0.0.1:{dash_port}"
        self.urls.update(node=node_url, dashboard=dash_url)
        self.node_target = f"127.0.0.1:{node_port}"
        node = self.start("node", _py("serve", "--model", str(model), "--port", str(node_port),
                                      "--log-dir", str(log_dir), "--max-batch", str(args.max_batch),
                                      "--model-version", "deepseek-tiny-demo",
                                      "--conversation-idle", CONVERSATION_IDLE))
        engine = None
        es_url = None
        if args.with_search_engine:
            es_port = pick_port(args.search_engine_port, "the search engine", self.say)
            es_url = f"http://127.0.0.1:{es_port}"
            self.urls["search"] = es_url
            engine = self.start("search-engine", _py("search-engine", "start", "--port", str(es_port),
                                                     "--data", str(wd / "search-engine")))
        prom_url = None
        prom = None
        if args.with_prometheus:
            import shutil

            prom_bin = shutil.which("prometheus") or "/usr/bin/prometheus"
            if not Path(prom_bin).exists():
                raise DemoError("--with-prometheus: no `prometheus` binary (Debian: apt-get install prometheus)")
            prom_port = pick_port(args.prometheus_port, "Prometheus", self.say)
            prom_url = f"http://127.0.0.1:{prom_port}"
            self.urls["prometheus"] = prom_url
            (wd / "prometheus").mkdir(exist_ok=True)
            self._write_yaml(wd / "prometheus.yml", {
                "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"},
                "scrape_configs": [{"job_name": "seekwatch", "metrics_path": "/metrics",
                                    "static_configs": [{"targets": [f"127.0.0.1:{node_port}"],
                                                        "labels": {"deployment": "demo"}}]}]})
            prom = self.start("prometheus", [prom_bin, f"--config.file={wd / 'prometheus.yml'}",
                                             f"--storage.tsdb.path={wd / 'prometheus'}",
                                             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"])
        dash_args = ["dashboard", "--port", str(dash_port), "--alerts-db", str(wd / "alertd.sqlite"),
                     "--cache-dir", str(wd / "dashboard-cache")]
        dash_args += ["--url", es_url] if es_url else ["--logs", str(log_dir)]
        dash_args += ["--prometheus", prom_url] if prom_url else ["--node", node_url]
        # no login: the demo's conversations are synthetic and it listens on 127.0.0.1 only;
        # a real dashboard takes --auth-config (docs/dashboard.md, docs/security.md)
        dash_args.append("--insecure-no-auth")
        dash_args += ["--conversation-idle", CONVERSATION_IDLE]
        dashboard = self.start("dashboard", _py(*dash_args))

        self.wait_ready(node, node_url)
        self.say(f"  [{next(n)}/{steps}] node       {node_url}   OpenAI API {node_url}/v1 · metrics {node_url}/metrics · "
                 f"session logs {log_dir}")
        if prom is not None:
            self.wait_ready(prom, prom_url)
            self.say(f"  [{next(n)}/{steps}] prometheus {prom_url}   scraping the node every 2 s")
        if engine is not None:
            self.wait_ready(engine, es_url)
            self.run_step("es-setup", _py("es-setup", "--url", es_url), timeout=120)
            self.es_baseline = self._es_count()
            self.start("ship", _py("ship", "--logs", str(log_dir), "--url", es_url, "--quiet",
                                   "--state-dir", str(wd / "ship-state")))
            self.say(f"  [{next(n)}/{steps}] search     {es_url}   OpenSearch; es-setup done; `seekwatch ship` tailing {log_dir}")

        # 3. alertd
        state = wd / "alertd.sqlite"
        for suffix in ("", "-wal", "-shm"):  # a fresh alert state each run, so the alert shows again
            Path(str(state) + suffix).unlink(missing_ok=True)
        cfg = demo_alert_config(node_url, state, dash_url, webhook=args.webhook, prometheus_url=prom_url,
                                capacity=args.max_batch)
        self._write_yaml(wd / "alerts.yaml", cfg)
        alertd = self.start("alertd", _py("alertd", "--config", str(wd / "alerts.yaml"), "--log-level", "WARNING"))
        self.alertd_reader = threading.Thread(target=self._read_alertd, args=(alertd,), name="alertd-output",
                                              daemon=True)
        self.alertd_reader.start()
        recv = "console" + (f" + webhook {args.webhook}" if args.webhook else "")
        src = f"PromQL on {prom_url}" if prom_url else "scraping the node"
        self.say(f"  [{next(n)}/{steps}] alertd     {recv}; {src} every 2 s; config {wd / 'alerts.yaml'}")

        # 4. dashboard
        self.wait_ready(dashboard, dash_url)
        self.say(f"  [{next(n)}/{steps}] dashboard  {dash_url}")
        time.sleep(0.5)
        if not alertd.running:
            raise DemoError(f"alertd exited with status {alertd.proc.returncode}:\n{alertd.tail()}")
        self.say(f"Connect NextChat: Settings → Custom Endpoint → provider DeepSeek (or OpenAI), endpoint "
                 f"{node_url}, model deepseek-chat, any API key (the demo node has none). Details: docs/deployment.md")
        if has_display() and sys.stdout.isatty() and not args.no_browser:  # not in scripts and tests
            import webbrowser

            try:
                webbrowser.open(dash_url)
            except Exception:  # noqa: BLE001 - a browser is a convenience
                pass

    def _write_yaml(self, path: Path, data: dict[str, Any]) -> None:
        import yaml

        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")

    def _incident_config(self, cfg):
        """The spike: one-turn conversations pasting a long sales table, as many at once as
        ``--incident-concurrency``, arriving faster than they finish, for ``--incident-duration``."""
        from dataclasses import replace

        n = self.args.incident_concurrency
        return replace(cfg, sessions_per_second=max(4.0, n / 2.0), turns=(1, 1), stream_ratio=1.0,
                       feedback_ratio=0.0, abort_ratio=0.0, pii_ratio=0.0, think_time=(0.0, 0.0),
                       max_tokens=(200, 400), max_concurrency=n, duration=None, drain=5.0,
                       scenarios_file=INCIDENT_SCENARIOS, seed=None if cfg.seed is None else cfg.seed + 1)

    def _say_plan(self, cfg) -> None:
        args = self.args
        dur = f"for {args.duration:g} s" if args.duration else "until Ctrl-C"
        self.say(f"Traffic {dur}: {cfg.sessions_per_second:g} conversations/s, {cfg.turns[0]}-{cfg.turns[1]} turns, "
                 f"{cfg.stream_ratio:.0%} streamed, {cfg.abort_ratio:.0%} stopped midway, "
                 f"{cfg.feedback_ratio:.0%} rated ({cfg.negative_ratio:.0%} of them thumbs-down)")
        at, length = args.incident_at, args.incident_duration
        if args.no_incident:
            self.say("What to expect: healthy traffic only (--no-incident): turn completion around 93 %, "
                     "TTFT P99 well under 500 ms, no alert.")
        elif args.duration and at >= args.duration:
            self.say(f"What to expect: healthy traffic only: the incident is planned at {_clock(at)}, "
                     f"after this run's {args.duration:g} s (--incident-at).")
        else:
            self.say(f"What to expect: {_clock(0)}-{_clock(at)} healthy traffic (turn completion around 93 %, "
                     f"TTFT P99 well under 500 ms). At {_clock(at)} an incident on purpose: a load spike of "
                     f"{args.incident_concurrency} customers at once pasting long sales tables, for {length:g} s. "
                     f"Their prefill work queues up and TTFT P99 rises over 500 ms: the alert "
                     f"\"P99 latency high\" fires within seconds (console below, dashboard Alerts). The spike ends "
                     f"at {_clock(at + length)}; the alert resolves about 30 s later.")

    def traffic(self) -> None:
        import asyncio

        from seekwatch.loadgen import LoadGenerator, config_from_args

        args = self.args
        cfg = config_from_args(args, url=self.urls["node"])
        cfg.duration = None
        cfg.drain = 5.0
        gen = LoadGenerator(cfg)
        self.gen = gen
        self._say_plan(cfg)
        threads: list[tuple[LoadGenerator, threading.Thread, dict[str, Any], dict[str, Any]]] = []

        def launch(g: LoadGenerator, name: str) -> None:
            box: dict[str, Any] = {}
            loop_box: dict[str, Any] = {}

            def runner() -> None:
                async def main():
                    loop_box["loop"] = asyncio.get_running_loop()
                    return await g.run()

                try:
                    box["summary"] = asyncio.run(main())
                except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                    box["error"] = exc

            t = threading.Thread(target=runner, name=name, daemon=True)
            t.start()
            threads.append((g, t, box, loop_box))

        def stop(g: LoadGenerator, t: threading.Thread, loop_box: dict[str, Any]) -> None:
            loop = loop_box.get("loop")
            if loop is not None:
                try:
                    loop.call_soon_threadsafe(g.stop)
                except RuntimeError:
                    pass

        self.traffic_started = time.time()
        launch(gen, "loadgen")
        t = threads[0][1]
        spike: LoadGenerator | None = None
        spike_started = spike_ended = None
        t0 = time.monotonic()
        last_progress = 0.0
        last_check = time.monotonic()
        try:
            while t.is_alive():
                if self.stop_event.is_set():
                    break
                now = time.monotonic()
                el = now - t0
                if args.duration and el >= args.duration:
                    break
                if spike is None and not args.no_incident and el >= args.incident_at:
                    spike = LoadGenerator(self._incident_config(cfg))
                    spike_started = now
                    launch(spike, "incident")
                    self.say(f"[{_clock(el)}] INCIDENT: load spike starts now: {args.incident_concurrency} customers "
                             f"at once paste long sales tables for {args.incident_duration:g} s; watch TTFT P99 and "
                             f"the alert \"P99 latency high\"")
                if spike is not None and spike_ended is None and now - spike_started >= args.incident_duration:
                    stop(spike, *[(x[1], x[3]) for x in threads if x[0] is spike][0])
                    spike_ended = now
                    self.say(f"[{_clock(el)}] INCIDENT over: the spike ended after {spike.stats.turns_sent} "
                             f"long-prompt turns; the P99 alert resolves once its 30 s window holds no slow "
                             f"first tokens")
                if now - last_check >= 1.0:
                    last_check = now
                    for c in self.children:
                        if not c.running:
                            raise DemoError(f"{c.name} exited with status {c.proc.returncode}; "
                                            f"its output ({c.out_path}):\n{c.tail()}")
                        c.remember_descendants()
                if now - last_progress >= (1.0 if self.tty else 5.0):
                    last_progress = now
                    mark = "  INCIDENT" if spike is not None and spike_ended is None else ""
                    self.progress(f"[{_clock(el)}] " + gen.stats.progress_line().replace("loadgen", "demo", 1)
                                  + f"  alerts {len(self.alerts)}{mark}")
                self.stop_event.wait(0.2)
        finally:
            for g, th, _box, loop_box in threads:
                stop(g, th, loop_box)
            for g, th, _box, _loop_box in threads:
                th.join(cfg.drain + 10)
            box = threads[0][2]
            self.summary = box.get("summary") or gen.stats.summary()
            if spike is not None:
                sbox = [x[2] for x in threads if x[0] is spike][0]
                self.spike_summary = sbox.get("summary") or spike.stats.summary()
            self.say("")
        errors = [x[2]["error"] for x in threads if "error" in x[2]]
        if errors:
            raise DemoError(f"traffic generator failed: {errors[0]!r}")
        s = self.summary
        ok_turns = s["turns_answered"] + s["aborted_by_user"]
        if not self.stop_event.is_set() and ok_turns == 0:
            raise DemoError(f"the node answered no turn (last error: {s['last_error']})")
        if not self.stop_event.is_set():
            self.verify_extras()
        # the dashboard still answers at the end
        import httpx

        try:
            if httpx.get(self.urls["dashboard"] + "/_stcore/health", timeout=5, trust_env=False).status_code != 200:
                raise DemoError("the dashboard stopped answering")
        except httpx.HTTPError as exc:
            if not self.stop_event.is_set():
                raise DemoError(f"the dashboard stopped answering: {exc}") from None

    def alert_history(self) -> list[str]:
        """What alertd recorded (its state database): each alert's firing and resolution,
        the same history the dashboard's Alerts page shows."""
        import json
        import sqlite3

        path = self.workdir / "alertd.sqlite"
        if not path.exists():
            return []
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                rows = conn.execute("SELECT t, labels, event, value, threshold FROM events "
                                    "WHERE event IN ('firing', 'resolved') ORDER BY id").fetchall()
            finally:
                conn.close()
        except sqlite3.Error:
            return []
        from monitor.alerting.messages import RULE_TITLES

        out = []
        for t, labels, event, value, threshold in rows:
            rule = json.loads(labels).get("rule", "?")
            title = RULE_TITLES.get(rule, (rule, rule))[1]
            el = t - self.traffic_started if self.traffic_started else None
            when = _clock(el) if el is not None and el >= 0 else time.strftime("%H:%M:%S", time.localtime(t))
            val = "" if value is None else f" (value {value:.3g}, threshold {threshold:.3g})"
            out.append(f"  [{when}] {title}: {event}{val}")
        return out

    def verify_extras(self) -> None:
        """With the real services in: Prometheus scraped the node, the engine holds the turns."""
        import httpx

        if "prometheus" in self.urls:
            try:
                r = httpx.get(self.urls["prometheus"] + "/api/v1/query", timeout=5, trust_env=False,
                              params={"query": f'sum(seekwatch_requests_total{{job="seekwatch",instance="{self.node_target}"}})'})
                result = r.json()["data"]["result"]
                n = float(result[0]["value"][1]) if result else 0.0
            except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
                raise DemoError(f"Prometheus query failed: {exc}") from None
            if n <= 0:
                raise DemoError("Prometheus has no seekwatch_requests_total from the node")
            self.say(f"Prometheus: {n:.0f} turns counted through PromQL")
        if "search" in self.urls:
            deadline = time.monotonic() + 20
            count = 0
            while time.monotonic() < deadline and not self.stop_event.is_set():
                count = self._es_count() - self.es_baseline
                if count > 0:
                    break
                self.stop_event.wait(1.0)
            if count <= 0:
                raise DemoError("no session record of this run reached the search engine (see ship.out)")
            self.say(f"search engine: {count} session records of this run shipped (data stream seekwatch-sessions)")

    def _es_count(self) -> int:
        import httpx

        try:
            r = httpx.get(self.urls["search"] + "/seekwatch-sessions/_count", trust_env=False, timeout=5)
            return int(r.json().get("count", 0)) if r.status_code == 200 else 0
        except (httpx.HTTPError, ValueError):
            return 0

    def teardown(self) -> None:
        if not self.children:
            return
        names = [c.name for c in sorted(self.children, key=lambda c: PARTS[c.name].stop_tier)]
        self.say("Stopping: " + ", ".join(names) + " …")
        killed: list[str] = []
        for tier in STOP_TIERS:
            group = [c for c in self.children if PARTS[c.name].stop_tier == tier]
            if group:
                killed += stop_all(group, hurry=lambda: self.signals >= 2)
        if killed:
            self.say("  forced (SIGKILL) after the grace period: " + ", ".join(killed))
        left = [f"{c.name}: {c.leftovers()}" for c in self.children if c.leftovers()]
        if left:
            self.failures.append("processes still running after stop: " + "; ".join(left))
        if self.alertd_reader is not None:
            self.alertd_reader.join(5)  # alertd has exited: its last lines are echoed
        for c in self.children:
            if c.proc.stdout and not (c.name == "alertd" and self.alertd_reader and self.alertd_reader.is_alive()):
                c.proc.stdout.close()
        self.children.clear()


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def _seconds(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a number of seconds") from None
    if not f > 0:
        raise argparse.ArgumentTypeError(f"{v} must be greater than 0")
    return f


def _port(v: str) -> int:
    try:
        p = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a port number") from None
    if not 0 <= p < 65536:
        raise argparse.ArgumentTypeError(f"{p} is not a port number (0 = any free port)")
    return p


def _url(v: str) -> str:
    if not v.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{v!r} is not an http(s) URL")
    return v


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    from seekwatch.loadgen import add_arguments

    p = subparsers.add_parser(name, help=help_text, description=(
        help_text + ": makes the tiny model if absent, starts a node, alertd and the dashboard on local "
        "logs, prints their URLs and drives healthy multi-turn traffic; at --incident-at it stages a load "
        "spike that fires the P99 alert, which resolves after it. Ctrl-C stops everything."))
    p.add_argument("--duration", type=_seconds, metavar="SECONDS",
                   help="stop after SECONDS of traffic and exit (0 when every part worked); default: until Ctrl-C")
    p.add_argument("--workdir", default="var/demo", help="model, logs, configs and state (default ./var/demo)")
    p.add_argument("--model-dir", metavar="DIR", help="serve this model folder instead of the tiny one (e.g. real DeepSeek weights)")
    p.add_argument("--port", type=_port, default=8000, help="node port (default 8000; another free one if busy; 0 = any)")
    p.add_argument("--dashboard-port", type=_port, default=8501, help="dashboard port (default 8501; another if busy)")
    p.add_argument("--prometheus-port", type=_port, default=9090, help="with --with-prometheus (default 9090)")
    p.add_argument("--search-engine-port", type=_port, default=9200, help="with --with-search-engine (default 9200)")
    p.add_argument("--webhook", type=_url, metavar="URL",
                   help="also send alerts to this Alertmanager-format webhook (e.g. a chat-ops relay)")
    p.add_argument("--with-prometheus", action="store_true",
                   help="also run Debian's prometheus scraping the node; alertd evaluates through PromQL")
    p.add_argument("--with-search-engine", action="store_true",
                   help="also run the bundled OpenSearch, es-setup and `seekwatch ship`; the dashboard reads it")
    p.add_argument("--max-batch", type=int, default=16, help="node's --max-batch (default 16)")
    p.add_argument("--start-timeout", type=_seconds, default=180.0, metavar="SECONDS",
                   help="how long each part may take to come up (default 180)")
    p.add_argument("--no-browser", action="store_true",
                   help="never open a browser (none opens without a display, or when stdout is not a terminal)")
    inc = p.add_argument_group("the incident (a load spike that fires the P99 alert, then clears)")
    inc.add_argument("--incident-at", type=_seconds, default=INCIDENT["at"], metavar="SECONDS",
                     help=f"start the load spike SECONDS into the traffic (default {INCIDENT['at']:g})")
    inc.add_argument("--incident-duration", type=_seconds, default=INCIDENT["duration"], metavar="SECONDS",
                     help=f"how long the spike lasts (default {INCIDENT['duration']:g})")
    inc.add_argument("--incident-concurrency", type=int, default=INCIDENT["concurrency"], metavar="N",
                     help=f"customers pasting long prompts at once during the spike (default {INCIDENT['concurrency']})")
    inc.add_argument("--no-incident", action="store_true", help="healthy traffic only")
    tr = p.add_argument_group("traffic (the same flags as seekwatch loadgen)")
    add_arguments(tr, url_required=False, defaults=DEMO_TRAFFIC)
    p.set_defaults(run=run, timeout=60.0)
    return p


def run(args: argparse.Namespace) -> int:
    from contracts.config import ConfigError

    if args.max_batch < 1:
        raise ConfigError(f"--max-batch {args.max_batch}: must be at least 1")
    if args.incident_concurrency < 1:
        raise ConfigError(f"--incident-concurrency {args.incident_concurrency}: must be at least 1")
    from seekwatch.loadgen import config_from_args

    config_from_args(args, url="http://127.0.0.1:1")  # flag errors: one line, exit 2, before starting
    return Demo(args).run()
