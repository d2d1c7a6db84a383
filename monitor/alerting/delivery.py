"""Delivery of queued notifications: retries with exponential backoff, logged and counted.

Runs in its own thread with its own SQLite connection. A row is marked ``sent`` as soon as
the receiver accepted it, so a restart never re-sends it. A transient failure (connection
error, 408/429/5xx, a rate-limit code) is retried after ``backoff * 2**(attempt-1)`` (capped
at ``max_backoff``: :class:`contracts.retry.Backoff`) until ``max_attempts``, then marked
``failed`` — logged at ERROR and counted as ``outcome="failed"``. A permanent failure (the
receiver module says which: a bad signature, an unknown token, another 4xx) is marked
``failed`` at once and counted the same way; it is logged at ERROR the first time a receiver
fails with that error, and at DEBUG while it keeps failing with it, so a wrong secret shows
up once, not once per alert.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from contracts.retry import Backoff

from .receivers import DeliveryError, Receiver, build_receiver
from .state import StateStore

log = logging.getLogger("seekwatch.alertd.delivery")


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Delay before retry number ``attempt`` (1 = first retry): the one retry policy,
    :class:`contracts.retry.Backoff`."""
    return Backoff(base, cap).delay(attempt)


class Deliverer:
    def __init__(self, state_path, receivers: list[dict[str, Any]], delivery: dict[str, Any], metrics=None):
        import httpx

        self.store = StateStore(state_path)
        self.receivers: dict[str, Receiver] = {r["name"]: build_receiver(r) for r in receivers}
        self.max_attempts = int(delivery.get("max_attempts", 8))
        self.backoff = Backoff(base=float(delivery.get("backoff", 1.0)), cap=float(delivery.get("max_backoff", 300.0)))
        self.client = httpx.Client(timeout=float(delivery.get("timeout", 10.0)), trust_env=False)
        self.metrics = metrics
        self.wake = threading.Event()
        self._reported: dict[str, str] = {}   # receiver -> the permanent error last logged at ERROR

    def _count(self, receiver: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.notifications.labels(receiver, outcome).inc()

    def deliver_due(self, now: float | None = None) -> int:
        """Attempt every due notification once; returns how many were sent."""
        now = time.time() if now is None else now
        sent = 0
        failed_now: set[str] = set()
        for row in self.store.due(now):
            if row["receiver"] in failed_now:
                continue          # keep this receiver's order: retry the older one first
            rc = self.receivers.get(row["receiver"])
            payload = row["payload"]
            if rc is None:
                self.store.mark_status(row["id"], "failed", "receiver no longer configured")
                log.error("notification %s for removed receiver %s dropped", row["id"], row["receiver"])
                self._count(row["receiver"], "failed")
                continue
            if payload["status"] == "firing" and all(
                    self.store.is_silenced(a["labels"], now) for a in payload["alerts"]):
                self.store.mark_status(row["id"], "silenced")
                self._count(rc.name, "silenced")
                continue
            attempt = row["attempts"] + 1
            try:
                rc.send(self.client, payload, time.time())
            except DeliveryError as exc:
                if exc.permanent:
                    self._permanent(row["id"], rc, attempt, exc)
                    continue
                failed = attempt >= self.max_attempts
                delay = self.backoff.delay(attempt)
                self.store.mark_retry(row["id"], attempt, time.time() + delay, str(exc), failed)
                if not failed:
                    failed_now.add(row["receiver"])
                if failed:
                    log.error("notification %s to %s failed for good after %d attempts: %s",
                              row["id"], rc.name, attempt, exc)
                    self._count(rc.name, "failed")
                else:
                    log.warning("notification %s to %s: attempt %d failed (%s); retry in %.1fs",
                                row["id"], rc.name, attempt, exc, delay)
                    self._count(rc.name, "retry")
                continue
            self.store.mark_sent(row["id"], time.time())
            self._reported.pop(rc.name, None)
            sent += 1
            log.info("notification %s (%s %s) delivered to %s on attempt %d",
                     row["id"], payload["status"], payload["group_key"], rc.name, attempt)
            self._count(rc.name, "sent")
        if self.metrics is not None:
            self.metrics.outbox_pending.set(len(self.store.outbox("pending")))
        return sent

    def _permanent(self, oid: int, rc: Receiver, attempt: int, exc: DeliveryError) -> None:
        """Not retried: marked failed and counted now; logged at ERROR once per receiver and error."""
        self.store.mark_retry(oid, attempt, time.time(), str(exc), failed=True)
        self._count(rc.name, "failed")
        if self._reported.get(rc.name) == str(exc):
            log.debug("notification %s to %s refused permanently again: %s", oid, rc.name, exc)
            return
        self._reported[rc.name] = str(exc)
        log.error("notification %s to %s refused permanently, not retried: %s (check the receiver's url, "
                  "secret and settings; later notifications refused the same way are logged at DEBUG)",
                  oid, rc.name, exc)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.deliver_due()
            except Exception:  # keep delivering; a bug here must not stop alerting
                log.exception("delivery loop error")
            nxt = self.store.next_due()
            wait = 1.0 if nxt is None else min(1.0, max(0.02, nxt - time.time()))
            self.wake.wait(wait)
            self.wake.clear()

    def close(self) -> None:
        self.client.close()
        self.store.close()
