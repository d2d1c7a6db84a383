"""The node's instrumentation behind the :class:`~inference.turns.TurnObserver` interface:
status classification, PII masking, metrics, the session log, cost, and GPU readings.

One place decides a turn's status, so the metric ``requests_total{status}``, the log's
``status`` and the completion rate the alerts read can never disagree.

Where the work runs, and why (measured in docs/benchmarks.md, instrumentation overhead):

* On the request path: nothing but scheduling the rest.
* Right after the response, on the event loop's next iteration (before the loop reads any
  new request, so a scrape that follows a response always sees its turn): the status with
  the refusal check, the metrics, and masking, building and serialising the record,
  ~60 µs. Here the turn's strings are still in the CPU's cache and no thread has to wake.
  Done on the writer thread instead, the record work landed as a cold wake-up inside
  whichever request ran next, and cost it several times its CPU.
* On the session log's writer thread: only the file I/O, batched while the node is busy
  (a 50 ms linger), and written at once when the node has been idle for 5 ms.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from inference.conversations import ConversationTracker
from inference.engine.base import Engine
from inference.gpu import GpuCollector
from inference.metrics import NodeMetrics
from inference.quality import RefusalDetector, classify_status, default_detector
from inference.session_log import SessionLogWriter, serialise
from inference.session_record import build_feedback_record, build_session_record
from inference.turns import FeedbackEvent, TurnRecord
from contracts.cost import CostModel
from contracts.signals import DEFAULT_CONVERSATION_IDLE_S

log = logging.getLogger("seekwatch.instrumentation")

#: How long the node must stay idle after logging a turn before the session log is
#: written at once rather than at the end of the writer's linger. Long enough that a busy
#: node's next requests arrive first (a client whose stream ended sends its next request
#: within a millisecond, and a wave of turns ending together must not wake the writer once
#: per turn); short enough that the write lands in a quiet node's idle gap, not inside its
#: next request.
IDLE_WRITE_DELAY_S = 0.005


class NodeInstrumentation:
    def __init__(self, metrics: NodeMetrics, writer: SessionLogWriter, cost: CostModel,
                 detector: RefusalDetector, gpu: GpuCollector | None = None,
                 node_busy: Callable[..., bool] = lambda slack=0: True,
                 conversation_idle_s: float = DEFAULT_CONVERSATION_IDLE_S):
        self.metrics = metrics
        self.writer = writer
        self.cost = cost
        self.detector = detector
        self.gpu = gpu
        #: ``node_busy(slack=0)``: True while more than ``slack`` requests are in flight, or any
        #: run or wait in the engine. A busy node's writer batches records (a linger) rather
        #: than wake for each; when the node is idle there is nothing a wake-up could delay.
        self.node_busy = node_busy
        self._idle_check_pending = False
        #: turn completion's thumbs-downs and dialogue completion's ended conversations
        #: (definitions: contracts.signals)
        self.conversations = ConversationTracker(metrics.observe_completed_turn_rated_down,
                                                 metrics.observe_conversation_ended, idle_s=conversation_idle_s)
        metrics.conversations_ended.before_collect = self.conversations.close_idle

    @classmethod
    def from_config(cls, config: Any, registry, engine: Engine, cost: CostModel, *,
                    requests_in_flight: Callable[[], int] | None = None) -> "NodeInstrumentation":
        """The node's instrumentation. ``requests_in_flight`` counts the HTTP requests being
        served (``inference.app.RequestsInFlight``); with the engine's queue it tells when
        the node is idle."""
        metrics = NodeMetrics(registry)
        metrics.requests_running.set_function(lambda: engine.state().running)
        metrics.requests_waiting.set_function(lambda: engine.state().waiting)
        writer = SessionLogWriter(config.log_dir, metrics=metrics, retention_days=config.log_retention_days)
        gpu = GpuCollector().start()
        registry.register(gpu)

        def busy(slack: int = 0) -> bool:
            """Requests in flight beyond ``slack``, or anything running or waiting in the engine."""
            if requests_in_flight is not None and requests_in_flight() > slack:
                return True
            state = engine.state()
            return bool(state.running or state.waiting)

        return cls(metrics, writer, cost, default_detector(), gpu, busy,
                   conversation_idle_s=config.conversation_idle_s)

    def status_of(self, turn: TurnRecord) -> str:
        error = None
        if turn.error_type:
            error = {"type": turn.error_type, "message": turn.error_message, "code": turn.error_code}
        return classify_status(turn.finish_reason, error, turn.aborted, turn.response, self.detector,
                               http_status=turn.http_status if turn.http_status != 200 and not turn.aborted else None,
                               generation_started=not turn.rejected)

    def on_turn(self, turn: TurnRecord) -> None:
        _after_response(self._observe_turn, turn)

    def _observe_turn(self, turn: TurnRecord) -> None:
        status = self.status_of(turn)
        tpot = None
        if turn.ttft_s is not None and turn.completion_tokens > 1:
            tpot = (turn.e2e_s - turn.ttft_s) / (turn.completion_tokens - 1)
        self.metrics.observe_turn(status, turn.e2e_s, turn.ttft_s, tpot, turn.queue_s,
                                  turn.prompt_tokens, turn.completion_tokens, turn.request_kind)
        self.conversations.on_turn(turn.session_id, turn.request_id, status, turn.started_at + turn.e2e_s,
                                   turn.request_kind)
        self._log(lambda: self._session_record(turn, status))

    def _log(self, build: Callable[[], dict]) -> None:
        """Build, mask and serialise one record and queue the line for the writer thread.
        A record that cannot be built is logged and counted as dropped, never raised:
        the response it describes has already gone out."""
        try:
            line = serialise(build())
        except Exception:
            log.exception("session log: record could not be built; dropped")
            self.writer.count_dropped(1)
            return
        self.writer.submit(line)
        # Only when this turn may have been the last one: the response it describes may
        # still count as in flight (slack 1). A busy node sets no timer at all.
        if not self._idle_check_pending and not self.node_busy(slack=1):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._idle_check_pending = True
            loop.call_later(IDLE_WRITE_DELAY_S, self._write_if_idle)

    def _write_if_idle(self) -> None:
        """(Event loop timer.) Still idle: have the writer write now, in the idle gap."""
        self._idle_check_pending = False
        if not self.node_busy():
            self.writer.write_now()

    def _session_record(self, turn: TurnRecord, status: str) -> dict:
        """Runs after the response (see the module docstring): the record is masked before
        it is serialised, and nothing unmasked leaves the process."""
        error = None
        if turn.error_type:
            error = {"type": turn.error_type, "message": turn.error_message or "", "code": turn.error_code}
        record = build_session_record(
            session_id=turn.session_id, request_id=turn.request_id, turn_index=turn.turn_index,
            prompt=turn.prompt, response=turn.response, model_version=turn.model_version,
            duration_s=turn.e2e_s, ttft_s=turn.ttft_s, status=status,
            input_tokens=turn.prompt_tokens, output_tokens=turn.completion_tokens,
            cost_usd=0.0 if turn.rejected else self.cost.turn_cost_usd(
                input_tokens=turn.prompt_tokens, output_tokens=turn.completion_tokens, latency_s=turn.e2e_s),
            finish_reason=turn.finish_reason, queue_s=turn.queue_s, reasoning=turn.reasoning or None,
            user=turn.user, request_model=turn.model, temperature=turn.temperature, top_p=turn.top_p,
            max_tokens=turn.max_tokens, stream=turn.stream, endpoint=turn.endpoint, error=error,
            ended_at=turn.started_at + turn.e2e_s, request_kind=turn.request_kind,
        )
        self.metrics.observe_redactions(record["pii"]["redactions"])
        return record

    def on_feedback(self, feedback: FeedbackEvent) -> None:
        _after_response(self._observe_feedback, feedback)

    def _observe_feedback(self, feedback: FeedbackEvent) -> None:
        self.metrics.observe_feedback(feedback.rating)
        self.conversations.on_feedback(feedback.request_id, feedback.rating, feedback.received_at)

        def build() -> dict:
            record = build_feedback_record(rating=feedback.rating, request_id=feedback.request_id,
                                           session_id=feedback.session_id, comment=feedback.comment,
                                           feedback_id=feedback.feedback_id, at=feedback.received_at)
            self.metrics.observe_redactions(record.get("pii", {}).get("redactions", {}))
            return record

        self._log(build)

    def on_invalid_request(self, http_status: int) -> None:
        """A body the node could not read (400, 413): a metric, no record (there is no turn to
        describe); its kind is unknown, so ``other``."""
        self.metrics.observe_turn("rejected", None, None, None, None, 0, 0, "other")

    def on_unauthorized(self, turn: TurnRecord) -> None:
        """A 401/403: counted like any rejection (``requests_total{status="rejected"}`` with the
        kind when the body could be read), in ``auth_failures_total``, and logged as a record
        without prompt or reply text, so a burst of bad keys shows in the log and can alert."""
        self.metrics.observe_auth_failure()
        self.on_turn(turn)

    def close(self) -> None:
        dropped = self.writer.close()
        if dropped:
            log.error("session log: %d records could not be written at shutdown", dropped)
        if self.gpu is not None:
            self.gpu.stop()


def _after_response(fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(*args)`` on the running event loop's next iteration, after the response
    that is being finished has been handed to the socket; without a running loop (a
    script, a test), run it now."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        fn(*args)
        return
    loop.call_soon(fn, *args)
