"""Direct-scrape source: fetch every node's ``/metrics`` (:mod:`.http_scrape`), parse the exposition, keep a short
history in memory and turn it into :class:`~monitor.alerting.model.NodeObservation` s.

* P99 latency: per-bucket counter increases over ``window`` (reset-aware), then
  Prometheus' ``histogram_quantile`` — the same arithmetic as
  ``histogram_quantile(0.99, sum by (le) (rate(..._bucket[window])))``.
* GPU utilization: the average of the samples over the rule's ``for`` (``avg_over_time``).
* Completion: increases of ``seekwatch_requests_total{status}`` and
  ``seekwatch_feedback_total{rating="down"}`` over ``window``.
* Load: the average of ``seekwatch_requests_running`` over the scaling window.

A node that cannot be fetched or parsed, or exposes no ``seekwatch_`` sample, is reported as
down with the reason, which the no-data rule turns into an alert.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from dataclasses import dataclass
from typing import Iterable

from contracts import metrics as M
from prometheus_client.parser import text_string_to_metric_families

from .config import AlertdConfig, node_id
from .model import UNKNOWN, Completion, NodeObservation, histogram_quantile, increase

log = logging.getLogger("seekwatch.alertd.scrape")

LATENCY_METRICS = {"ttft": M.TIME_TO_FIRST_TOKEN, "e2e": M.REQUEST_DURATION}


@dataclass
class Sample:
    """The few series the rules need, extracted from one scrape of one node."""

    t: float
    buckets: dict[float, float]     # le -> cumulative count, summed over other labels
    requests: dict[str, float]      # status -> counter value
    down: float                     # feedback_total{rating="down"}
    gpu: dict[str, float]           # gpu -> utilization ratio
    running: float | None


def parse_exposition(text: str, latency_metric: str, t: float) -> Sample | None:
    """Parse Prometheus text exposition with ``prometheus_client.parser``.

    Only the lines of the series the rules read are handed to the parser (a node exposes a few
    hundred lines, the rules need about forty): that keeps a cycle over 100 nodes cheap.
    Returns None when the text holds no ``seekwatch_`` sample at all.
    """
    bucket_name = latency_metric + "_bucket"
    wanted = (bucket_name, M.REQUESTS_TOTAL, M.FEEDBACK_TOTAL, M.GPU_UTILIZATION, M.REQUESTS_RUNNING)
    lines = []
    seen_any = False
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        if line.startswith(M.PREFIX):
            seen_any = True
            if line.startswith(wanted):
                lines.append(line)
    if not seen_any:
        return None
    buckets: dict[float, float] = {}
    requests: dict[str, float] = {}
    down = 0.0
    gpu: dict[str, float] = {}
    running: float | None = None
    for fam in text_string_to_metric_families("\n".join(lines) + "\n"):
        for s in fam.samples:
            name = s.name
            if name == bucket_name:
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif name == M.REQUESTS_TOTAL:
                st = s.labels.get("status", "")
                requests[st] = requests.get(st, 0.0) + s.value
            elif name == M.FEEDBACK_TOTAL:
                if s.labels.get("rating") == "down":
                    down += s.value
            elif name == M.GPU_UTILIZATION:
                gpu[s.labels.get("gpu", "")] = s.value
            elif name == M.REQUESTS_RUNNING:
                running = (running or 0.0) + s.value
    return Sample(t, buckets, requests, down, gpu, running)


class NodeHistory:
    def __init__(self, url: str, keep_seconds: float):
        self.url = url
        self.node = node_id(url)
        self.keep = keep_seconds
        self.samples: collections.deque[Sample] = collections.deque()
        self.error: str | None = "not scraped yet"

    def add(self, s: Sample) -> None:
        self.samples.append(s)
        while self.samples and self.samples[0].t < s.t - self.keep:
            self.samples.popleft()

    def window(self, now: float, seconds: float) -> list[Sample]:
        start = now - seconds - 1e-6
        return [s for s in self.samples if s.t >= start]

    def covers(self, now: float, seconds: float, slack: float) -> bool:
        return bool(self.samples) and self.samples[0].t <= now - seconds + slack


def observe(h: NodeHistory, cfg: AlertdConfig, now: float) -> NodeObservation:
    """Compute every rule's input for one node from its history."""
    obs = NodeObservation(node=h.node, up=h.error is None, error=h.error)
    if not obs.up:
        return obs
    ev = cfg.evaluation_interval
    p99 = cfg.rule("p99_latency")
    if p99:
        win = h.window(now, p99["window"])
        if len(win) >= 2:
            les = set().union(*(s.buckets.keys() for s in win))
            inc = [(le, increase([s.buckets.get(le, 0.0) for s in win])) for le in les]
            q = histogram_quantile(p99.get("quantile", 0.99), inc)
            obs.latency = None if math.isnan(q) else q
    comp = cfg.rule("completion_rate")
    if comp:
        win = h.window(now, comp["window"])
        if len(win) >= 2:
            statuses = set().union(*(s.requests.keys() for s in win))
            per = {st: increase([s.requests.get(st, 0.0) for s in win]) for st in statuses}
            obs.completion = Completion(total=sum(per.values()), completed=per.get("completed", 0.0),
                                        down=increase([s.down for s in win]))
    gpu = cfg.rule("gpu_utilization")
    if gpu and h.samples:
        span = max(gpu["for"], ev)
        win = h.window(now, span)
        enough = h.covers(now, span, ev)
        for g in set().union(*(s.gpu.keys() for s in win)):
            vals = [s.gpu[g] for s in win if g in s.gpu]
            obs.gpu[g] = sum(vals) / len(vals) if enough else UNKNOWN
    sc = cfg.rule("scaling")
    if sc and h.samples:
        win = [s for s in h.window(now, sc["window"]) if s.running is not None]
        if win and h.covers(now, sc["window"], ev):
            obs.running = sum(s.running for s in win) / len(win)
    return obs


class ScrapeSource:
    """Scrapes ``cfg.nodes`` concurrently (asyncio + httpx) once per evaluation."""

    kind = "scrape"

    def __init__(self, cfg: AlertdConfig):
        from .http_scrape import Endpoint

        self.cfg = cfg
        self.latency_metric = LATENCY_METRICS[(cfg.rules.get("p99_latency") or {}).get("metric", "ttft")]
        keep = cfg.history_seconds() + 2 * cfg.evaluation_interval
        self.histories = [NodeHistory(u, keep) for u in cfg.nodes]
        self.endpoints = [Endpoint(u) for u in cfg.nodes]
        self._loop = asyncio.new_event_loop()

    def nodes(self) -> list[str]:
        return [h.node for h in self.histories]

    async def _fetch(self, h: NodeHistory, ep, t: float) -> None:
        from .http_scrape import ScrapeError

        try:
            status, body = await ep.get(self.cfg.scrape_timeout)
        except ScrapeError as exc:
            h.error = f"cannot scrape {h.url}: {exc}"
            return
        if status != 200:
            h.error = f"HTTP {status} from {h.url}"
            return
        try:
            sample = parse_exposition(body.decode("utf-8", "replace"), self.latency_metric, t)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            h.error = f"cannot parse the exposition of {h.url}: {exc}"
            return
        if sample is None:
            h.error = f"{h.url} exposes no seekwatch_ series"
            return
        h.error = None
        h.add(sample)

    async def _scrape_all(self, t: float) -> None:
        await asyncio.gather(*(self._fetch(h, ep, t) for h, ep in zip(self.histories, self.endpoints)))

    def collect(self, now: float | None = None) -> list[NodeObservation]:
        now = time.time() if now is None else now
        self._loop.run_until_complete(self._scrape_all(now))   # one timestamp per cycle, like a scrape
        return [observe(h, self.cfg, now) for h in self.histories]

    def close(self) -> None:
        for ep in self.endpoints:
            ep.close()
        # let the transports finish closing before the loop goes away
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()


def observe_static(cfg: AlertdConfig, samples: Iterable[tuple[str, Sample]], now: float) -> list[NodeObservation]:
    """Observations from given samples (no HTTP) — for tests and replaying recorded data."""
    hs: dict[str, NodeHistory] = {}
    for url, s in samples:
        h = hs.setdefault(url, NodeHistory(url, cfg.history_seconds() * 2))
        h.error = None
        h.add(s)
    return [observe(h, cfg, now) for h in hs.values()]
