"""Unit tests of the node's pure pieces: reasoning split, stop strings, incremental
detokenization of split UTF-8 characters, session fingerprints, API key checks."""
from __future__ import annotations

import pytest

from inference.auth import ApiKeys
from inference.chat.reasoning import ReasoningSplitter
from inference.engine.detokenizer import ByteLevelDetokenizer, IncrementalDetokenizer, StopMatcher
from inference.session_ids import conversation_fingerprint, session_id_for, turn_index


def _split(chunks, starts_in_reasoning=False):
    s = ReasoningSplitter(starts_in_reasoning)
    deltas = [s.feed(c) for c in chunks] + [s.flush()]
    return "".join(r for r, _ in deltas), "".join(c for _, c in deltas), deltas


@pytest.mark.parametrize("chunks", [
    ["<think>先查订单", "状态</think>\n\n您的订单已发货。"],
    ["<thi", "nk>先查订单状态</th", "ink>您的订单已发货。"],
    ["  <think>", "先查订单状态", "</think>", "您的订单已发货。"],
])
def test_reasoning_is_split_out_whatever_the_chunking(chunks):
    reasoning, content, deltas = _split(chunks)
    assert reasoning == "先查订单状态"
    assert content == "您的订单已发货。"


def test_stream_never_puts_reasoning_and_content_in_one_delta_scripted_engine():
    """Serving layer with a scripted engine (a test double standing in for a DeepSeek-R1
    model, which cannot run here): the chunk that closes </think> and starts the answer is
    sent as two deltas, because NextChat drops `content` from a delta that also carries
    `reasoning_content`."""
    import asyncio
    import json

    from inference.chat.protocol import ChatCompletionRequest
    from inference.chat.serving import ChatService
    from inference.engine.base import Engine, EngineOutput, EngineState
    from inference.turns import NullObserver

    class ScriptedEngine(Engine):
        model_version = "scripted-r1"

        async def start(self): ...
        async def stop(self): ...
        def state(self): return EngineState(True, 0, 0, 1, 1)

        async def generate(self, request):
            async def outputs():
                for text in ["<think>想一想", "</think>答案", "是这样"]:
                    yield EngineOutput(text=text, prompt_tokens=3, completion_tokens=1)
                yield EngineOutput(finish_reason="stop", prompt_tokens=3, completion_tokens=3)
            return outputs()

    service = ChatService(ScriptedEngine(), ["deepseek-reasoner"], NullObserver())
    req = ChatCompletionRequest(model="deepseek-reasoner", messages=[{"role": "user", "content": "q"}], stream=True)

    async def run():
        ctx = service.context(req, {}, "/v1/chat/completions")
        return [e async for e in service.stream(req, ctx, await service.start(req, ctx))]

    events = asyncio.run(run())
    deltas = [json.loads(e[6:])["choices"][0]["delta"] for e in events if e.startswith("data: {")]
    assert not any("content" in d and "reasoning_content" in d for d in deltas)
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "想一想"
    assert "".join(d.get("content", "") for d in deltas) == "答案是这样"


def test_text_without_think_is_all_content():
    reasoning, content, _ = _split(["<b>bold</b> and ", "<thinking> is not a tag"])
    assert reasoning == "" and content == "<b>bold</b> and <thinking> is not a tag"


def test_reasoning_open_from_the_prompt():
    reasoning, content, _ = _split(["weighing options", "</think>answer"], starts_in_reasoning=True)
    assert (reasoning, content) == ("weighing options", "answer")


def test_stop_matcher_never_emits_part_of_a_stop_string():
    m = StopMatcher(["STOP", "。\n"])
    out = "".join(m.feed(c) for c in ["Hello ST", "O", "P world"]) + m.flush()
    assert out == "Hello " and m.stopped
    m = StopMatcher(["STOP"])
    out = "".join(m.feed(c) for c in ["no st", "op here"]) + m.flush()
    assert out == "no stop here" and not m.stopped


@pytest.mark.parametrize("kind", ["window", "byte-level"])
def test_incremental_detokenizers_hold_split_characters(tiny_model_dir, kind):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "退货流程：请访问订单详情页。Returns are easy — 谢谢!"
    ids = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
    d = IncrementalDetokenizer(tok) if kind == "window" else ByteLevelDetokenizer(tok)
    pieces = [d.add([i]) for i in ids] + [d.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)


def test_session_fingerprint_follows_the_conversation_opening():
    turn1 = [("system", "客服"), ("user", "如何退货？")]
    turn2 = turn1 + [("assistant", "请访问订单页。"), ("user", "要多久？")]
    other = [("system", "客服"), ("user", "订单到哪了？")]
    assert conversation_fingerprint(turn1) == conversation_fingerprint(turn2) != conversation_fingerprint(other)
    assert (turn_index(turn1), turn_index(turn2)) == (0, 1)
    assert session_id_for({"x-session-id": "abc-1"}, "u", turn1) == "abc-1"
    by_user = session_id_for({}, "alice@example.com", turn1)
    assert by_user.startswith("user-") and "alice" not in by_user  # the raw user value may be PII
    assert session_id_for({"x-session-id": "has spaces & <tags>"}, None, turn1).startswith("hs-")


def test_api_keys_accept_only_bearer_of_a_known_key():
    keys = ApiKeys(["sk-a", "sk-b"])
    assert keys.check("Bearer sk-b") and keys.check("bearer sk-a")
    for bad in (None, "", "Bearer", "Bearer ", "sk-a", "Basic sk-a", "Bearer sk-c"):
        assert not keys.check(bad)
    assert ApiKeys([]).check(None) and ApiKeys([]).check("")


def test_sse_events_survive_clients_that_split_on_unicode_line_breaks():
    """U+2028/U+2029/NEL are legal raw in JSON, but str.splitlines() (httpx's aiter_lines)
    breaks lines there; the node escapes them so every event stays one line."""
    import json

    from inference.chat.serving import _sse

    event = _sse({"delta": {"content": "第一行\u2028第二行\u0085x\u2029y"}})
    assert len(event.rstrip("\n").splitlines()) == 1
    assert json.loads(event[len("data: "):])["delta"]["content"] == "第一行\u2028第二行\u0085x\u2029y"


@pytest.mark.parametrize("include_usage", [True, False])
def test_text_chunks_spliced_into_the_encoded_chunk_are_the_same_bytes(include_usage):
    """The streamed reply's text chunks are the encoded chunk with the text spliced in; they
    must be byte for byte what encoding the whole chunk gives, whatever the text (quotes,
    control characters, line breakers that get escaped, Chinese, emoji) and the model name."""
    import json

    from inference.chat.serving import _ChunkFormat

    fmt = _ChunkFormat({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                        "model": 'deep\u2028seek "7b"', "system_fingerprint": None}, include_usage)
    for text in ["hi", "你好", 'a"b\\c\n\r\t', "\u2028\u2029\x85", "😀", "\x00\x1f", ""]:
        for key in ("content", "reasoning_content"):
            event = fmt.delta(key, text)
            assert event == fmt.chunk({key: text})
            assert json.loads(event[len("data: "):])["choices"][0]["delta"] == {key: text}
            assert len(event.rstrip("\n").splitlines()) == 1


def test_requests_in_flight_count_from_arrival_to_the_last_byte():
    """StampArrival counts each HTTP request while the app serves it, and un-counts it when
    the app returns or raises; the instrumentation reads the count as 'node busy'."""
    import asyncio

    from inference.app import RequestsInFlight, StampArrival

    seen = []

    async def app(scope, receive, send):
        seen.append((in_flight.n, "arrival" in scope.get("state", {})))
        if scope.get("path") == "/boom":
            raise RuntimeError("boom")

    in_flight = RequestsInFlight()
    mw = StampArrival(app, in_flight=in_flight)

    async def run():
        await mw({"type": "http", "path": "/ok"}, None, None)
        try:
            await mw({"type": "http", "path": "/boom"}, None, None)
        except RuntimeError:
            pass
        await mw({"type": "lifespan"}, None, None)

    asyncio.run(run())
    assert seen[:2] == [(1, True), (1, True)]
    assert seen[2][0] == 0  # lifespan is not a request
    assert in_flight.n == 0
