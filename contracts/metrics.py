"""Prometheus metric names and histogram buckets shared by the node, alertd and the dashboard.

Names are the contract between the parts (docs/metrics.md lists them); every part refers to these constants instead of
spelling the strings again, so alert rules and dashboards cannot drift from the exposition.
"""
from __future__ import annotations

PREFIX = "seekwatch_"

# Histograms (seconds). The exposition adds _bucket/_sum/_count.
REQUEST_DURATION = PREFIX + "request_duration_seconds"
TIME_TO_FIRST_TOKEN = PREFIX + "time_to_first_token_seconds"
TIME_PER_OUTPUT_TOKEN = PREFIX + "time_per_output_token_seconds"
REQUEST_QUEUE = PREFIX + "request_queue_seconds"

# Counters. prometheus-client appends _total to counter samples; these are the sample names.
REQUESTS_TOTAL = PREFIX + "requests_total"
PROMPT_TOKENS_TOTAL = PREFIX + "prompt_tokens_total"
GENERATION_TOKENS_TOTAL = PREFIX + "generation_tokens_total"
FEEDBACK_TOTAL = PREFIX + "feedback_total"
PII_REDACTIONS_TOTAL = PREFIX + "pii_redactions_total"
LOG_RECORDS_TOTAL = PREFIX + "log_records_total"
LOG_DROPPED_TOTAL = PREFIX + "log_dropped_total"
AUTH_FAILURES_TOTAL = PREFIX + "auth_failures_total"
#: Completed chat turns that drew a thumbs-down (once per turn): turn completion's subtrahend.
COMPLETED_TURNS_RATED_DOWN_TOTAL = PREFIX + "completed_turns_rated_down_total"
#: Conversations that ended (idle for the node's --conversation-idle), by ``outcome``:
#: dialogue completion = outcome="completed" / all (definitions: contracts.signals).
CONVERSATIONS_ENDED_TOTAL = PREFIX + "conversations_ended_total"

# Gauges.
REQUESTS_RUNNING = PREFIX + "requests_running"
REQUESTS_WAITING = PREFIX + "requests_waiting"
GPU_AVAILABLE = PREFIX + "gpu_available"
GPU_UTILIZATION = PREFIX + "gpu_utilization_ratio"
GPU_MEMORY_USED = PREFIX + "gpu_memory_used_bytes"
GPU_MEMORY_TOTAL = PREFIX + "gpu_memory_total_bytes"
GPU_TEMPERATURE = PREFIX + "gpu_temperature_celsius"
GPU_POWER = PREFIX + "gpu_power_watts"

#: Values of the ``status`` label of ``requests_total`` and of the log record's ``status``.
STATUSES = ("completed", "error", "aborted", "truncated", "refused", "rejected")
#: Statuses that end a turn abnormally; a turn is *completed* only when its status is
#: ``completed`` and it drew no negative feedback.
INCOMPLETE_STATUSES = ("error", "aborted", "truncated", "refused", "rejected")
#: Values of the ``request_kind`` label of the turn and token counters and of the log record's
#: ``request_kind``: the user's turn (``chat``), a client's background request (NextChat's
#: conversation ``title`` and memory ``summary``), or anything else (``other``: a request
#: refused before the node could read it). Records written before the field existed have none:
#: readers treat a missing ``request_kind`` as ``chat``. Completion and dialogue completion
#: count ``chat`` only; tokens and cost count every kind.
REQUEST_KINDS = ("chat", "title", "summary", "other")
#: The kind a record without the field is read as.
DEFAULT_REQUEST_KIND = "chat"
FEEDBACK_RATINGS = ("up", "down")
PII_KINDS = ("phone", "email", "id", "card", "ip", "secret")

#: Latency buckets, dense around the 500 ms alert threshold so a P99 near it can be read
#: to within 50 ms, and wide enough for 60 s streams (NextChat's cut-off).
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
    0.55, 0.6, 0.7, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)
#: Per-token latency is an order of magnitude smaller.
TOKEN_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
)
