"""Direct-scrape source: fetch every node's ``/metrics`` (:mod:`.http_scrape`), parse the exposition, keep a short
history in memory and turn it into :class:`~monitor.alerting.model.NodeObservation` s.

* P99 latency: per-bucket counter increases over ``window`` (reset-aware), then
  Prometheus' ``histogram_quantile`` — the same arithmetic as
  ``histogram_quantile(0.99, sum by (le) (rate(..._bucket[window])))``.
* GPU utilization: the average of the samples over the rule's ``for`` (``avg_over_time``).
* Turn completion: increases of ``seekwatch_requests_total{status}`` (chat turns: the
  ``request_kind="chat"`` series, or series without the label) and
  ``seekwatch_completed_turns_rated_down_total`` over ``window``.
* Dialogue completion: increases of ``seekwatch_conversations_ended_total{outcome}``.
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
from dataclasses import dataclass, field
from typing import Any, Iterable

from contracts import metrics as M
from contracts.signals import CHAT
from prometheus_client.parser import text_string_to_metric_families

from .config import AlertdConfig, node_id
from .model import UNKNOWN, Completion, Dialogues, NodeObservation, histogram_quantile

log = logging.getLogger("seekwatch.alertd.scrape")

LATENCY_METRICS = {"ttft": M.TIME_TO_FIRST_TOKEN, "e2e": M.REQUEST_DURATION}


@dataclass
class Sample:
    """The few series the rules need, extracted from one scrape of one node."""

    t: float
    buckets: dict[float, float]     # le -> cumulative count, summed over other labels
    requests: dict[str, float]      # status -> counter value (chat turns)
    down: float                     # completed_turns_rated_down_total
    gpu: dict[str, float]           # gpu -> utilization ratio
    running: float | None
    conversations: dict[str, float] = field(default_factory=dict)  # outcome -> conversations_ended_total
    e2e_buckets: dict[float, float] = field(default_factory=dict)  # request_duration buckets (p99_e2e_latency)
    # Reset-adjusted running totals since the history began (set by NodeHistory.add): the
    # counter increase between two samples is then one subtraction per series, not a pass
    # over every sample in the window.
    cb: dict[float, float] | None = None
    cr: dict[str, float] | None = None
    cd: float = 0.0
    cc: dict[str, float] | None = None
    ce: dict[float, float] | None = None


def _accumulate(prev_raw: dict, prev_cum: dict, raw: dict) -> dict:
    cum = {}
    for k, v in raw.items():
        p = prev_raw.get(k, 0.0)
        cum[k] = prev_cum.get(k, 0.0) + (v - p if v >= p else v)
    return cum


def _fast_samples(lines: list[str]) -> list[tuple[str, dict[str, str], float]] | None:
    """Parse plain sample lines (``name{k="v",...} value``) without escapes or timestamps.

    Returns None as soon as a line is anything else, and the caller hands the whole text to
    ``prometheus_client.parser`` instead — that parser stays the reference (a test checks both
    agree on real expositions); this path only exists because it is ~5x cheaper on the
    lines prometheus_client itself writes.
    """
    out = []
    for line in lines:
        if "\\" in line:
            return None
        brace = line.find("{")
        if brace < 0:
            parts = line.split(" ")
            if len(parts) != 2:
                return None
            out.append((parts[0], {}, float(parts[1])))
            continue
        close = line.rfind("}")
        if close < brace:
            return None
        rest = line[close + 1:].strip().split(" ")
        if len(rest) != 1:
            return None
        labels: dict[str, str] = {}
        body = line[brace + 1:close]
        if body:
            for pair in body.split('",'):
                k, sep, v = pair.partition('="')
                if not sep:
                    return None
                labels[k.strip()] = v[:-1] if v.endswith('"') else v
        out.append((line[:brace], labels, float(rest[0])))
    return out


def _reference_samples(lines: list[str]) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value)
            for fam in text_string_to_metric_families("\n".join(lines) + "\n") for s in fam.samples]


def parse_exposition(text: str, latency_metric: str, t: float, reference: bool = False,
                     e2e: bool = False) -> Sample | None:
    """Parse Prometheus text exposition (0.0.4) into the few series the rules read.

    Only the lines of those series are parsed (a node exposes a few hundred lines, the rules
    need about forty). Lines go through a plain-format fast path, or ``prometheus_client.parser``
    for anything unusual (escaped label values, timestamps) or with ``reference=True``.
    Returns None when the text holds no ``seekwatch_`` sample at all. ``e2e``: also read the
    end-to-end duration buckets (the ``p99_e2e_latency`` rule).
    """
    bucket_name = latency_metric + "_bucket"
    e2e_name = M.REQUEST_DURATION + "_bucket"
    wanted = (bucket_name, *((e2e_name,) if e2e else ()), M.REQUESTS_TOTAL, M.COMPLETED_TURNS_RATED_DOWN_TOTAL, M.CONVERSATIONS_ENDED_TOTAL,
              M.GPU_UTILIZATION, M.REQUESTS_RUNNING)
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
    samples = None if reference else _fast_samples(lines)
    if samples is None:
        samples = _reference_samples(lines)
    buckets: dict[float, float] = {}
    requests: dict[str, float] = {}
    down = 0.0
    conversations: dict[str, float] = {}
    e2e_buckets: dict[float, float] = {}
    gpu: dict[str, float] = {}
    running: float | None = None
    for name, labels, value in samples:
        if name == bucket_name or name == e2e_name:
            le = float(labels["le"])
            if name == bucket_name:
                buckets[le] = buckets.get(le, 0.0) + value
            if e2e and name == e2e_name:
                e2e_buckets[le] = e2e_buckets.get(le, 0.0) + value
        elif name == M.REQUESTS_TOTAL:
            if labels.get("request_kind", CHAT) in ("", CHAT):
                st = labels.get("status", "")
                requests[st] = requests.get(st, 0.0) + value
        elif name == M.COMPLETED_TURNS_RATED_DOWN_TOTAL:
            down += value
        elif name == M.CONVERSATIONS_ENDED_TOTAL:
            o = labels.get("outcome", "")
            conversations[o] = conversations.get(o, 0.0) + value
        elif name == M.GPU_UTILIZATION:
            gpu[labels.get("gpu", "")] = value
        elif name == M.REQUESTS_RUNNING:
            running = (running or 0.0) + value
    return Sample(t, buckets, requests, down, gpu, running, conversations, e2e_buckets)


class NodeHistory:
    def __init__(self, url: str, keep_seconds: float):
        self.url = url
        self.node = node_id(url)
        self.keep = keep_seconds
        self.samples: collections.deque[Sample] = collections.deque()
        self.error: str | None = "not scraped yet"

    def add(self, s: Sample) -> None:
        if self.samples:
            p = self.samples[-1]
            s.cb = _accumulate(p.buckets, p.cb, s.buckets)
            s.cr = _accumulate(p.requests, p.cr, s.requests)
            s.cd = p.cd + (s.down - p.down if s.down >= p.down else s.down)
            s.cc = _accumulate(p.conversations, p.cc, s.conversations)
            s.ce = _accumulate(p.e2e_buckets, p.ce, s.e2e_buckets)
        else:
            s.cb, s.cr, s.cd, s.cc = dict(s.buckets), dict(s.requests), s.down, dict(s.conversations)
            s.ce = dict(s.e2e_buckets)
        self.samples.append(s)
        while self.samples and self.samples[0].t < s.t - self.keep:
            self.samples.popleft()

    def window(self, now: float, seconds: float) -> list[Sample]:
        start = now - seconds - 1e-6
        return [s for s in self.samples if s.t >= start]

    def covers(self, now: float, seconds: float, slack: float) -> bool:
        return bool(self.samples) and self.samples[0].t <= now - seconds + slack


def _increase(win: list[Sample], attr: str) -> dict[Any, float]:
    """Per key, how much the reset-adjusted counters ``attr`` grew from the window's first
    sample to its last (a key first seen inside the window counts from 0)."""
    first, last = getattr(win[0], attr), getattr(win[-1], attr)
    return {k: c - first.get(k, 0.0) for k, c in last.items()}


def observe(h: NodeHistory, cfg: AlertdConfig, now: float) -> NodeObservation:
    """Compute every rule's input for one node from its history."""
    obs = NodeObservation(node=h.node, up=h.error is None, error=h.error)
    if not obs.up:
        return obs
    ev = cfg.evaluation_interval

    def window(rule: dict[str, Any], part: str) -> list[Sample] | None:
        """The samples of ``rule``'s window, or None with fewer than two (no increase yet);
        ``part`` is marked partial while the history is shorter than the window."""
        win = h.window(now, rule["window"])
        if len(win) < 2:
            return None
        if not h.covers(now, rule["window"], ev):
            obs.partial.add(part)
        return win

    for name, attr, part in (("p99_latency", "cb", "latency"), ("p99_e2e_latency", "ce", "latency_e2e")):
        rule = cfg.rule(name)
        win = window(rule, part) if rule else None
        if win:
            q = histogram_quantile(rule.get("quantile", 0.99), list(_increase(win, attr).items()))
            setattr(obs, part, None if math.isnan(q) else q)
    comp = cfg.rule("turn_completion")
    win = window(comp, "completion") if comp else None
    if win:
        per = _increase(win, "cr")
        obs.completion = Completion(total=sum(per.values()), completed=per.get("completed", 0.0),
                                    down=win[-1].cd - win[0].cd)
    dial = cfg.rule("completion_rate")
    win = window(dial, "dialogues") if dial else None
    if win:
        per = _increase(win, "cc")
        obs.dialogues = Dialogues(ended=sum(per.values()), completed=per.get("completed", 0.0))
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
    """Scrapes ``cfg.nodes`` concurrently (asyncio, :mod:`.http_scrape`) once per evaluation."""

    kind = "scrape"

    def __init__(self, cfg: AlertdConfig):
        from .http_scrape import Endpoint

        self.cfg = cfg
        self.latency_metric = LATENCY_METRICS[(cfg.rules.get("p99_latency") or {}).get("metric", "ttft")]
        self.e2e = cfg.rule("p99_e2e_latency") is not None
        keep = cfg.history_seconds() + 2 * cfg.evaluation_interval
        self.histories = [NodeHistory(u, keep) for u in cfg.nodes]
        ctx = cfg.ssl_context() if any(u.startswith("https:") for u in cfg.nodes) else None
        self.endpoints = [Endpoint(u, cfg.scrape_headers, ctx) for u in cfg.nodes]
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
            sample = parse_exposition(body.decode("utf-8", "replace"), self.latency_metric, t, e2e=self.e2e)
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
