"""What the node knows about one chat turn when it ends: the input of metrics and the log.

The serving layer fills a :class:`TurnRecord` and hands it to a :class:`TurnObserver`; the
instrumentation (metrics, PII masking, the session log) lives behind that interface, so the
HTTP and generation code stays free of it and ``--no-instrumentation`` swaps in a no-op.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class TurnRecord:
    request_id: str
    session_id: str
    turn_index: int
    endpoint: str
    stream: bool
    model: str
    model_version: str
    prompt: str
    started_at: float                      # wall clock (time.time()) at arrival
    response: str = ""
    reasoning: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    e2e_s: float = 0.0
    ttft_s: float | None = None
    queue_s: float = 0.0
    aborted: bool = False
    rejected: bool = False
    error_type: str | None = None
    error_message: str | None = None
    error_code: str | None = None
    http_status: int = 200
    user: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    request_kind: str = "chat"             # contracts.metrics.REQUEST_KINDS
    extra: dict = field(default_factory=dict)


@dataclass
class FeedbackEvent:
    feedback_id: str
    rating: str
    request_id: str | None
    session_id: str | None
    comment: str | None
    received_at: float


class TurnObserver(Protocol):
    def on_turn(self, turn: TurnRecord) -> None: ...

    def on_feedback(self, feedback: FeedbackEvent) -> None: ...

    def on_invalid_request(self, http_status: int) -> None: ...

    def on_unauthorized(self, turn: TurnRecord) -> None: ...


class NullObserver:
    """``--no-instrumentation``: nothing is measured or logged."""

    def on_turn(self, turn: TurnRecord) -> None:
        pass

    def on_feedback(self, feedback: FeedbackEvent) -> None:
        pass

    def on_invalid_request(self, http_status: int) -> None:
        pass

    def on_unauthorized(self, turn: TurnRecord) -> None:
        pass
