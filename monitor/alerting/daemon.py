"""The evaluation loop: source -> rules -> state machine (+outbox) -> delivery thread."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .config import AlertdConfig
from .delivery import Deliverer
from .metrics import AlertdMetrics
from .rules import Result, evaluate
from .state import StateStore

log = logging.getLogger("seekwatch.alertd")


def make_source(cfg: AlertdConfig):
    if cfg.prometheus_url:
        from .promql import PromQLSource

        return PromQLSource(cfg)
    from .scrape import ScrapeSource

    return ScrapeSource(cfg)


class Alertd:
    def __init__(self, cfg: AlertdConfig, metrics: AlertdMetrics | None = None, source: Any = None):
        self.cfg = cfg
        self.metrics = metrics or AlertdMetrics()
        self.source = source or make_source(cfg)
        self.store = StateStore(cfg.state_path)
        self.deliverer = Deliverer(cfg.state_path, cfg.receivers, cfg.delivery, self.metrics)
        self.last_result: Result | None = None
        self._next_prune = 0.0

    def evaluate_once(self, now: float | None = None) -> Result:
        from .promql import SourceError

        t0 = time.perf_counter()
        try:
            obs = self.source.collect(now)
            result = evaluate(self.cfg, obs)
            outcome = "ok"
        except SourceError as exc:
            log.warning("source error: %s", exc)
            result = evaluate(self.cfg, [], source_error=(exc.node, str(exc)))
            outcome = "source_error"
        now = time.time() if now is None else now
        queued = self.store.apply(result, now, repeat_interval=self.cfg.repeat_interval,
                                  group_by=self.cfg.group_by, receivers=self.cfg.receivers,
                                  send_resolved=self.cfg.send_resolved, dashboard_url=self.cfg.dashboard_url)
        m = self.metrics
        m.evaluations.labels(outcome).inc()
        m.cycle.observe(time.perf_counter() - t0)
        states = {"pending": 0, "firing": 0}
        for a in self.store.alerts():
            states[a["state"]] = states.get(a["state"], 0) + 1
        for s, n in states.items():
            m.alerts.labels(s).set(n)
        for e in result.evaluations:
            if e.labels.get("rule") == "no_data" and e.active is not None:
                m.node_up.labels(e.labels["node"]).set(0 if e.active else 1)
        rec = result.recommendation
        if rec is not None:
            m.load.set(rec.load if rec.load is not None else float("nan"))
            m.recommendation.set(rec.delta)
        for p in queued:
            log.info("queued %s notification %s for %s (%d alert(s))", p["status"], p["group_key"],
                     ", ".join(sorted({r["name"] for r in self.cfg.receivers})), len(p["alerts"]))
        if queued:
            self.deliverer.wake.set()
        if now >= self._next_prune:
            self._next_prune = now + 3600
            pruned = self.store.prune(now - self.cfg.history_retention)
            if pruned:
                log.info("pruned %d history rows older than %s", pruned, self.cfg.raw.get("history_retention"))
        self.last_result = result
        return result

    def run(self, stop: threading.Event, once: bool = False) -> None:
        worker = threading.Thread(target=self.deliverer.run, args=(stop,), name="alertd-delivery", daemon=True)
        if not once:
            worker.start()
        log.info("alertd started: %s", self.cfg.summary())
        next_at = time.monotonic()
        while not stop.is_set():
            try:
                self.evaluate_once()
            except Exception:
                log.exception("evaluation failed")
            if once:
                self.deliverer.deliver_due()
                break
            next_at += self.cfg.evaluation_interval
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind: skip missed ticks instead of bursting
                next_at = time.monotonic()
                delay = 0
            stop.wait(delay)
        stop.set()
        self.deliverer.wake.set()
        if worker.is_alive():
            worker.join(timeout=5)

    def close(self) -> None:
        try:
            self.source.close()
        finally:
            self.deliverer.close()
            self.store.close()
