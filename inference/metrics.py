"""The node's Prometheus metrics, created on a registry the caller owns.

Why a class over module globals: tests, the overhead benchmark (instrumentation on/off in
one process) and the demo each need their own registry, and a module-level default
registry would leak series between them. Every name comes from ``contracts.metrics`` so
alert rules and dashboards cannot drift from the exposition.

Cardinality rule: the only labels are ``status`` (6 values), ``request_kind`` (4: the user's
turn or a client's background request, on the turn and token counters), ``rating`` (2),
``kind`` (6, PII kinds), ``outcome`` (2) and, on the GPU collector, ``gpu`` (one per device).
A session id, user id or prompt never
becomes a label. All label values are pre-initialised so each series exists at 0 from the
first scrape — ``rate()`` and ``increase()`` then see the first event, and an alert on
``log_dropped_total > 0`` has a series to evaluate.
"""
from __future__ import annotations

from typing import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

from contracts import metrics as m
from contracts.signals import CONVERSATION_OUTCOMES

#: Every label name the node's exposition may carry (the test asserts this).
ALLOWED_LABELS = frozenset({"status", "request_kind", "rating", "kind", "gpu", "le", "outcome"})


def _base(name: str, suffix: str) -> str:
    """prometheus-client appends the suffix itself; pass it the base name."""
    return name[: -len(suffix)] if name.endswith(suffix) else name


class NodeMetrics:
    """Creates every node metric (names in contracts.metrics) on ``registry`` and offers typed helpers.

    The helpers are what the request path calls; each does a handful of lock-protected
    float additions (no I/O, no allocation beyond label lookup of pre-bound children).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.request_duration = Histogram(
            m.REQUEST_DURATION, "End-to-end duration of a chat turn, request received to last byte.",
            buckets=m.LATENCY_BUCKETS, registry=r)
        self.time_to_first_token = Histogram(
            m.TIME_TO_FIRST_TOKEN, "Time from request received to the first generated token.",
            buckets=m.LATENCY_BUCKETS, registry=r)
        self.time_per_output_token = Histogram(
            m.TIME_PER_OUTPUT_TOKEN, "Mean inter-token time of a turn after its first token.",
            buckets=m.TOKEN_LATENCY_BUCKETS, registry=r)
        self.request_queue = Histogram(
            m.REQUEST_QUEUE, "Time a request waited for a batch slot before generation began.",
            buckets=m.LATENCY_BUCKETS, registry=r)
        self.requests = Counter(
            _base(m.REQUESTS_TOTAL, "_total"),
            "Chat requests by final status and request kind (chat = the user's turns).",
            ["status", "request_kind"], registry=r)
        self.prompt_tokens = Counter(
            _base(m.PROMPT_TOKENS_TOTAL, "_total"),
            "Prompt (input) tokens counted, by request kind (rejected prompts included when counted).",
            ["request_kind"], registry=r)
        self.generation_tokens = Counter(
            _base(m.GENERATION_TOKENS_TOTAL, "_total"), "Tokens generated (output), by request kind.",
            ["request_kind"], registry=r)
        self.auth_failures = Counter(
            _base(m.AUTH_FAILURES_TOTAL, "_total"),
            "Requests refused with 401/403 (missing or wrong API key), any endpoint.", registry=r)
        self.feedback = Counter(
            _base(m.FEEDBACK_TOTAL, "_total"), "User feedback on turns, by rating.", ["rating"], registry=r)
        self.pii_redactions = Counter(
            _base(m.PII_REDACTIONS_TOTAL, "_total"), "PII items masked before logging, by kind.",
            ["kind"], registry=r)
        self.log_records = Counter(
            _base(m.LOG_RECORDS_TOTAL, "_total"), "Session/feedback log records written to disk.",
            registry=r)
        self.log_dropped = Counter(
            _base(m.LOG_DROPPED_TOTAL, "_total"),
            "Log records that could not be kept (spill overflow or unwritten at shutdown); must stay 0.",
            registry=r)
        self.completed_turns_rated_down = Counter(
            _base(m.COMPLETED_TURNS_RATED_DOWN_TOTAL, "_total"),
            "Completed chat turns that drew a thumbs-down, once per turn (turn completion's subtrahend).",
            registry=r)
        self.conversations_ended = _ConversationsEnded(registry=r)
        self.requests_running = Gauge(
            m.REQUESTS_RUNNING, "Requests currently generating.", registry=r)
        self.requests_waiting = Gauge(
            m.REQUESTS_WAITING, "Requests queued for a batch slot.", registry=r)

        # Pre-bind children: series exist at 0 and the hot path skips label lookup.
        self._by_status = {(s, k): self.requests.labels(status=s, request_kind=k)
                           for s in m.STATUSES for k in m.REQUEST_KINDS}
        self._prompt_by_kind = {k: self.prompt_tokens.labels(request_kind=k) for k in m.REQUEST_KINDS}
        self._gen_by_kind = {k: self.generation_tokens.labels(request_kind=k) for k in m.REQUEST_KINDS}
        self._by_rating = {r_: self.feedback.labels(rating=r_) for r_ in m.FEEDBACK_RATINGS}
        self._by_kind = {k: self.pii_redactions.labels(kind=k) for k in m.PII_KINDS}

    # ------------------------------------------------------------------ request path

    def observe_turn(self, status: str, e2e_s: float | None, ttft_s: float | None,
                     tpot_s: float | None, queue_s: float | None, prompt_tokens: int,
                     gen_tokens: int, request_kind: str = m.DEFAULT_REQUEST_KIND) -> None:
        """Record one finished turn.

        ``status`` must be one of ``contracts.metrics.STATUSES`` and ``request_kind`` one of
        ``contracts.metrics.REQUEST_KINDS`` (ValueError otherwise — an unknown value would
        silently create a new series). Latency histograms are not
        observed for ``rejected`` turns: they never reached the model, and their ~0 ms
        would pull the P99 the alert reads downwards. ``None`` timings are skipped
        (no token → no TTFT; one token → no TPOT).
        """
        counter = self._by_status.get((status, request_kind))
        if counter is None:
            if status not in m.STATUSES:
                raise ValueError(f"unknown status {status!r}; expected one of {m.STATUSES}")
            raise ValueError(f"unknown request kind {request_kind!r}; expected one of {m.REQUEST_KINDS}")
        counter.inc()
        if prompt_tokens:
            self._prompt_by_kind[request_kind].inc(prompt_tokens)
        if gen_tokens:
            self._gen_by_kind[request_kind].inc(gen_tokens)
        if status == "rejected":
            return
        if e2e_s is not None:
            self.request_duration.observe(e2e_s)
        if ttft_s is not None:
            self.time_to_first_token.observe(ttft_s)
        if tpot_s is not None:
            self.time_per_output_token.observe(tpot_s)
        if queue_s is not None:
            self.request_queue.observe(queue_s)

    def observe_auth_failure(self) -> None:
        """One request refused for its key (401/403); the turn itself goes through observe_turn."""
        self.auth_failures.inc()

    def observe_feedback(self, rating: str) -> None:
        """Count one feedback (``up`` / ``down``); ValueError for anything else."""
        child = self._by_rating.get(rating)
        if child is None:
            raise ValueError(f"unknown rating {rating!r}; expected one of {m.FEEDBACK_RATINGS}")
        child.inc()

    def observe_redactions(self, counts: Mapping[str, int]) -> None:
        """Add a per-kind count mapping (``MaskResult.counts`` / ``record['pii']['redactions']``)."""
        for kind, n in counts.items():
            if n:
                child = self._by_kind.get(kind)
                if child is None:
                    raise ValueError(f"unknown PII kind {kind!r}")
                child.inc(n)

    def set_queue_depth(self, running: int, waiting: int) -> None:
        """Set the running/waiting gauges (the scheduler calls this when they change)."""
        self.requests_running.set(running)
        self.requests_waiting.set(waiting)

    def observe_completed_turn_rated_down(self) -> None:
        self.completed_turns_rated_down.inc()

    def observe_conversation_ended(self, outcome: str) -> None:
        self.conversations_ended.inc(outcome)

    # ------------------------------------------------------------------ session log

    def observe_log_written(self, n: int = 1) -> None:
        """Records durably handed to the OS by the session-log writer."""
        if n:
            self.log_records.inc(n)

    def observe_log_dropped(self, n: int = 1) -> None:
        """Records that truly could not be kept. Any increase is a bug or a full disk."""
        if n:
            self.log_dropped.inc(n)


class _ConversationsEnded:
    """``seekwatch_conversations_ended_total{outcome}``, with a hook run before each collect.

    Conversations end by *not* getting a turn, so nothing on the request path notices; the
    hook (the conversation tracker's ``close_idle``) closes the idle ones right before a
    scrape reads the counter, so a scrape never lags the definition by a sweep interval.
    """

    def __init__(self, registry: CollectorRegistry):
        import threading

        self._values = {o: 0.0 for o in CONVERSATION_OUTCOMES}
        self._lock = threading.Lock()
        self.before_collect = None
        registry.register(self)

    def inc(self, outcome: str) -> None:
        if outcome not in self._values:
            raise ValueError(f"unknown outcome {outcome!r}; expected one of {CONVERSATION_OUTCOMES}")
        with self._lock:
            self._values[outcome] += 1

    def value(self, outcome: str) -> float:
        return self._values[outcome]

    def describe(self):
        return [CounterMetricFamily(_base(m.CONVERSATIONS_ENDED_TOTAL, "_total"), "", labels=["outcome"])]

    def collect(self):
        if self.before_collect is not None:
            self.before_collect()
        fam = CounterMetricFamily(
            _base(m.CONVERSATIONS_ENDED_TOTAL, "_total"),
            "Conversations that ended (no chat turn for the node's --conversation-idle), by outcome.",
            labels=["outcome"])
        with self._lock:
            for o, v in self._values.items():
                fam.add_metric([o], v)
        yield fam
