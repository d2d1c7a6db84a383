"""Where the node's instrumentation does its work: nothing on the request path; status,
metrics and the record (masking, building, serialising) on the event loop's next
iteration, after the response; only the I/O on the writer thread, at once when the node is
idle (inference/instrumentation.py)."""
from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from contracts.log_schema import validate_record
from inference.config import NodeConfig
from inference.engine.base import EngineState
from inference.instrumentation import NodeInstrumentation
from inference.turns import FeedbackEvent, TurnRecord
from contracts.cost import CostModel
from contracts.logfiles import read_records


class _Engine:
    def state(self) -> EngineState:
        return EngineState(True, 0, 0, 1, 1)


def _turn(i: int, prompt: str = "我的电话是13812345678") -> TurnRecord:
    return TurnRecord(request_id=f"chatcmpl-{i:08d}", session_id="fp-1", turn_index=i,
                      endpoint="/v1/chat/completions", stream=True, model="deepseek-chat",
                      model_version="tiny", started_at=time.time(), prompt=prompt, response="好的，已为您查询。",
                      prompt_tokens=12, completion_tokens=8, finish_reason="stop", e2e_s=0.2, ttft_s=0.05)


def _sample(reg: CollectorRegistry, name: str, labels: dict | None = None) -> float:
    return reg.get_sample_value(name, labels or {}) or 0.0


def _instrumentation(tmp_path) -> tuple[NodeInstrumentation, CollectorRegistry]:
    reg = CollectorRegistry()
    inst = NodeInstrumentation.from_config(NodeConfig(log_dir=str(tmp_path)), reg, _Engine(), CostModel.load())
    return inst, reg


def test_in_the_event_loop_the_turn_is_observed_after_the_response(tmp_path):
    """Inside a running loop, on_turn does nothing on the spot: the metrics and the record
    follow on the loop's next iteration, after the response has been handed on, and before
    the loop reads anything new (so a scrape after a response sees its turn)."""
    inst, reg = _instrumentation(tmp_path)
    completed = ("seekwatch_requests_total", {"status": "completed", "request_kind": "chat"})

    async def turn_then_next_iteration() -> tuple[float, int, float, int]:
        inst.on_turn(_turn(1))
        before = _sample(reg, *completed), inst.writer.pending + inst.writer.written
        await asyncio.sleep(0)
        return (*before, _sample(reg, *completed), inst.writer.pending + inst.writer.written)

    counted_before, logged_before, counted_after, logged_after = asyncio.run(turn_then_next_iteration())
    assert (counted_before, logged_before) == (0, 0)   # on_turn returned with nothing done
    assert (counted_after, logged_after) == (1, 1)     # one iteration later: counted and queued
    assert inst.writer.flush(10)
    inst.close()
    records, bad = read_records(tmp_path)
    assert not bad and [r["request_id"] for r in records] == ["chatcmpl-00000001"]
    validate_record(records[0])
    assert "13812345678" not in records[0]["prompt"]
    assert _sample(reg, "seekwatch_pii_redactions_total", {"kind": "phone"}) == 1


def test_a_record_that_cannot_be_built_is_counted_as_dropped_and_the_next_is_written(tmp_path, monkeypatch):
    """The response has already gone out, so a failure to build its record must not raise
    into the loop; it is logged, counted in log_dropped_total, and later turns are written."""
    inst, reg = _instrumentation(tmp_path)
    real = inst._session_record
    monkeypatch.setattr(inst, "_session_record",
                        lambda turn, status: (1 / 0) if turn.turn_index == 1 else real(turn, status))

    async def three_turns() -> None:
        for i in range(3):
            inst.on_turn(_turn(i))
        inst.on_feedback(FeedbackEvent(feedback_id="fb-1", rating="down", request_id="chatcmpl-00000002",
                                       session_id=None, comment="联系我 someone@example.com", received_at=time.time()))
        await asyncio.sleep(0)

    asyncio.run(three_turns())
    assert inst.writer.flush(10)
    inst.close()
    records, bad = read_records(tmp_path)
    assert not bad
    assert [r.get("request_id") for r in records] == ["chatcmpl-00000000", "chatcmpl-00000002", "chatcmpl-00000002"]
    assert records[-1]["event"]["dataset"] == "seekwatch.feedback" and "someone@example.com" not in records[-1]["comment"]
    assert _sample(reg, "seekwatch_log_dropped_total") == 1
    assert _sample(reg, "seekwatch_requests_total", {"status": "completed", "request_kind": "chat"}) == 3


def test_without_an_event_loop_the_record_is_built_at_once(tmp_path):
    inst, _ = _instrumentation(tmp_path)
    inst.on_turn(_turn(7))
    assert inst.writer.pending + inst.writer.written >= 1  # submitted before on_turn returned
    assert inst.writer.flush(10)
    inst.close()
    records, _ = read_records(tmp_path)
    assert [r["turn_index"] for r in records] == [7]


def test_an_idle_node_writes_its_log_at_once_and_a_busy_one_batches(tmp_path):
    """After a turn, a node that stays idle for IDLE_WRITE_DELAY_S has the writer write at
    once (the wake-up delays nobody); a busy node leaves the record to the writer's linger
    (60 s here, so 'written' and 'lingering' cannot be confused)."""
    from inference import instrumentation

    timer_set = {}

    def written_after(busy: bool, wait_s: float) -> int:
        inst, _ = _instrumentation(tmp_path / str(busy))
        inst.writer.linger_s = 60
        inst.node_busy = lambda slack=0: busy

        async def turn_then_wait() -> None:
            inst.on_turn(_turn(1))
            await asyncio.sleep(0)
            timer_set[busy] = inst._idle_check_pending  # a busy node sets no idle timer at all
            await asyncio.sleep(instrumentation.IDLE_WRITE_DELAY_S * 5)
            deadline = time.monotonic() + wait_s
            while inst.writer.written == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)

        asyncio.run(turn_then_wait())
        written = inst.writer.written
        inst.close()  # drains: nothing is lost either way
        assert len(read_records(tmp_path / str(busy))[0]) == 1
        return written

    assert written_after(busy=False, wait_s=10) == 1
    assert written_after(busy=True, wait_s=0.5) == 0
    assert timer_set == {False: True, True: False}
