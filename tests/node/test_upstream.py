"""The upstream engine, tested against a second real node as its upstream."""
from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import httpx
import openai
from hypothesis import given, settings
from hypothesis import strategies as st


@contextlib.contextmanager
def loopback_upstream(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real HTTP server on loopback standing in for an upstream that misbehaves in a way a
    second node cannot (``handler`` answers ``POST``); yields its ``/v1`` base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()


def ask_through(node_factory, upstream_url: str) -> httpx.Response:
    """One non-streamed chat turn through a node whose upstream is ``upstream_url``."""
    front = node_factory("--engine", "upstream", "--upstream-url", upstream_url,
                         "--served-model-name", "deepseek-chat", with_model=False)
    return httpx.post(front.openai_base + "/chat/completions", timeout=30,
                      json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}]})


def test_upstream_engine_streams_through(node, node_factory):
    front = node_factory("--engine", "upstream", "--upstream-url", node.openai_base,
                         "--served-model-name", "deepseek-chat", with_model=False)
    direct = openai.OpenAI(base_url=node.openai_base, api_key="x", max_retries=0)
    proxied = openai.OpenAI(base_url=front.openai_base, api_key="x", max_retries=0)
    kw = dict(model="deepseek-chat", messages=[{"role": "user", "content": "故障申报：打印机卡纸"}],
              temperature=0, max_tokens=10, extra_body={"ignore_eos": True})
    expected = direct.chat.completions.create(**kw).choices[0].message.content
    chunks = list(proxied.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    usage = [c.usage for c in chunks if c.usage][0]
    assert usage.completion_tokens == 10
    whole = proxied.chat.completions.create(**kw)
    assert whole.choices[0].message.content == expected and whole.choices[0].finish_reason == "length"


def test_upstream_errors_pass_through_in_openai_shape(node, node_factory):
    front = node_factory("--engine", "upstream", "--upstream-url", node.openai_base,
                         "--served-model-name", "deepseek-chat", "--upstream-model", "no-such-model",
                         with_model=False)
    r = httpx.post(front.openai_base + "/chat/completions", timeout=30,
                   json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404
    assert "no-such-model" in r.json()["error"]["message"]


def test_unreachable_upstream_is_502(node_factory):
    from tests.fixtures.ports import free_port

    r = ask_through(node_factory, f"http://127.0.0.1:{free_port()}/v1")
    assert r.status_code == 502
    assert "unreachable" in r.json()["error"]["message"]


def test_upstream_stream_with_raw_unicode_line_separators_stays_whole(node_factory):
    """An upstream that sends U+2028 raw inside its JSON (legal; vLLM-like servers may) must
    not have its events cut in two: a real loopback SSE server stands in for that upstream."""
    class Upstream(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for piece in ["第一行\u2028", "第二行\u2029", "end"]:
                chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                self.wfile.write(("data: " + json.dumps(chunk, ensure_ascii=False) + "\n\n").encode())
            self.wfile.write(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
                             b'"usage":{"prompt_tokens":3,"completion_tokens":3}}\n\ndata: [DONE]\n\n')

        def log_message(self, *a):
            pass

    with loopback_upstream(Upstream) as url:
        r = ask_through(node_factory, url)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "第一行\u2028第二行\u2029end"


def test_upstream_answering_200_without_an_event_stream_is_502(node_factory):
    """An upstream that ignores ``stream: true`` and answers 200 with JSON is refused by the one
    SSE reader (contracts.sse): a clear 502, not an empty answer."""
    class Upstream(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                            "finish_reason": "stop"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    with loopback_upstream(Upstream) as url:
        r = ask_through(node_factory, url)
    assert r.status_code == 502, r.text
    assert "text/event-stream" in r.json()["error"]["message"]


def _start_chunked_event_stream(handler: BaseHTTPRequestHandler) -> None:
    """Read the request's body and answer 200 with a chunked ``text/event-stream``."""
    handler.rfile.read(int(handler.headers["Content-Length"]))
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()


class _KeepAliveUpstream(BaseHTTPRequestHandler):
    """An OpenAI-style streaming upstream speaking HTTP/1.1 with keep-alive and a chunked
    body, as vLLM does; counts the TCP connections it accepted (one handler per connection)."""
    protocol_version = "HTTP/1.1"
    connections = 0
    linger_after_done = 0.0  # seconds the body stays open after [DONE]

    def setup(self):
        type(self).connections += 1
        super().setup()

    def do_POST(self):
        import time

        _start_chunked_event_stream(self)

        def frame(data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        for piece, finish in (("one ", None), ("two", None), ("", "stop")):
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": finish}]}
            frame(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        frame(b"data: [DONE]\n\n")
        time.sleep(self.linger_after_done)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, *a):
        pass


def test_streamed_requests_reuse_one_upstream_connection(node_factory):
    """After ``[DONE]`` the node reads the rest of the upstream's body, so the connection goes
    back to the pool: three streamed turns in turn open one TCP connection to the upstream,
    not three (a handshake, with TLS two, in front of every first token)."""
    class Upstream(_KeepAliveUpstream):
        connections = 0

    with loopback_upstream(Upstream) as url:
        front = node_factory("--engine", "upstream", "--upstream-url", url,
                             "--served-model-name", "deepseek-chat", with_model=False)
        client = openai.OpenAI(base_url=front.openai_base, api_key="x", max_retries=0)
        for _ in range(3):
            chunks = list(client.chat.completions.create(
                model="deepseek-chat", messages=[{"role": "user", "content": "x"}], stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two"
    assert Upstream.connections == 1


def test_a_body_left_open_after_done_ends_the_stream_anyway(monkeypatch):
    """An upstream that keeps its body open after ``[DONE]`` costs at most ``DRAIN_S``: the
    engine then gives up the connection, the stream ends with the events already read, and
    the next request opens a new connection."""
    import asyncio

    from contracts import sse

    class Upstream(_KeepAliveUpstream):
        connections = 0
        linger_after_done = 5.0

    monkeypatch.setattr(sse, "DRAIN_S", 0.2)

    async def run(url):
        async with _upstream_engine(url) as engine:
            outs = [out async for out in await engine.generate(_request())]
            return outs, engine.state()

    with loopback_upstream(Upstream) as url:
        # the 20 s bound only keeps a regression from hanging the suite (the body stays open 5 s)
        outs, state = asyncio.run(asyncio.wait_for(run(url), 20))
    assert "".join(o.text for o in outs) == "one two" and outs[-1].finish_reason == "stop"
    assert state.finished_total == 1 and state.running == 0


def test_the_one_sse_reader_takes_bytes_as_they_arrive():
    """``contracts.sse.DataDecoder`` (what the upstream engine parses with) fed one byte at a
    time: UTF-8 characters and CRLF line ends split across pieces, a comment, an event of
    two data lines, raw U+2028 inside the JSON; nothing after ``[DONE]``."""
    from contracts.sse import DataDecoder

    body = ('data: {"a": "第一\u2028x"}\r\n\r\n: keep-alive\n\ndata: two\ndata: lines\n\n'
            'event: x\rdata: three\r\rdata: [DONE]\n\ndata: after\n\n').encode()
    decoder, out = DataDecoder(), []
    for i in range(len(body)):
        out += decoder.feed(body[i:i + 1])
    assert out == ['{"a": "第一\u2028x"}', "two\nlines", "three"] and decoder.done
    whole = DataDecoder()
    assert whole.feed(body) == out and whole.feed(b"data: more\n\n") == []
    partial = DataDecoder()
    assert partial.feed(b"data: one\n\ndata: cut") == ["one"] and not partial.done


def _httpx_sse_data(pieces: list[bytes]) -> tuple[list[str], bool]:
    """The oracle: httpx-sse's own line and event decoders (what ``EventSource`` runs), the
    data of each event up to ``[DONE]``."""
    import codecs

    from httpx_sse._decoders import SSEDecoder, SSELineDecoder

    text, lines, events, out = codecs.getincrementaldecoder("utf-8")("replace"), SSELineDecoder(), SSEDecoder(), []
    for piece in pieces:
        for line in lines.decode(text.decode(piece)):
            event = events.decode(line)
            if event is None or not event.data:
                continue
            if event.data == "[DONE]":
                return out, True
            out.append(event.data)
    return out, False


_SSE_LINES = ["", "", "", "data", "data:", "data: ", "data: x", "data:  x", "data:y", "data: [DONE]", "data:[DONE]",
              'data: {"a": "第一\u2028"}', "dat", "datum: y", "data2: y", "event: e", "id: 1", "retry: 5", ":",
              ": data: c", " data: z", "x"]


@settings(max_examples=400, deadline=None)
@given(lines=st.lists(st.tuples(st.sampled_from(_SSE_LINES), st.sampled_from(["\n", "\r", "\r\n"])), max_size=30),
       cuts=st.lists(st.integers(1, 9), max_size=60))
def test_the_sse_reader_gives_what_httpx_sse_gives(lines, cuts):
    """The data fields are read in ``DataDecoder`` (httpx-sse's event decoder cost 3 µs per
    relayed token): on generated streams, cut into pieces anywhere (inside UTF-8 characters
    and CRLFs too), it returns exactly what httpx-sse's own decoders return."""
    from contracts.sse import DataDecoder

    body = "".join(line + end for line, end in lines).encode()
    pieces, i = [], 0
    for c in cuts:
        if i >= len(body):
            break
        pieces.append(body[i:i + c])
        i += c
    pieces.append(body[i:])
    decoder, out = DataDecoder(), []
    for piece in pieces:
        out += decoder.feed(piece)
    assert (out, decoder.done) == _httpx_sse_data(pieces)


class _BurstUpstream(BaseHTTPRequestHandler):
    """An upstream whose whole reply (50 tokens, usage, ``[DONE]``) arrives in one write: what
    a fast upstream looks like to a node that reads it a little later."""
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        _start_chunked_event_stream(self)
        events = [{"choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]} for i in range(50)]
        events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 50, "total_tokens": 53}})
        body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        self.wfile.flush()

    def log_message(self, *a):
        pass


@contextlib.asynccontextmanager
async def _upstream_engine(url: str, **kw):
    """A started upstream engine in front of ``url``, stopped on the way out."""
    from inference.engine.upstream import UpstreamEngine

    engine = UpstreamEngine(url, model="m", **kw)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


def _request():
    from inference.engine.base import GenerationRequest, SamplingParams

    return GenerationRequest("r", "m", [{"role": "user", "content": "x"}], SamplingParams(max_tokens=50))


def test_a_fast_upstreams_first_token_is_handed_on_before_the_rest_is_read():
    """The first token leaves as soon as it is decoded, alone, though the whole reply is
    already buffered (decoding buffered events never suspends: the writer used to get its
    first token only with all 50); the rest leaves together, not one output per token."""
    import asyncio

    async def run(url):
        async with _upstream_engine(url) as engine:
            return [out async for out in await engine.generate(_request())]

    with loopback_upstream(_BurstUpstream) as url:
        outs = asyncio.run(asyncio.wait_for(run(url), 30))
    assert outs[0].text == "t0 "
    assert "".join(o.text for o in outs) == "".join(f"t{i} " for i in range(50))
    assert len(outs) <= 4  # the first token, the rest as read (one or two outputs), the finish
    assert outs[-1].finish_reason == "length" and outs[-1].completion_tokens == 50


def test_concurrent_streams_keep_their_connections_for_the_next_requests():
    """Four streams at once, twice: the second four reuse the first four's connections (each
    stream read to its end gives its connection back), and every stream gives its place back."""
    import asyncio

    class Upstream(_KeepAliveUpstream):
        connections = 0

    async def run(url):
        async with _upstream_engine(url, max_batch=4, max_queue=4) as engine:
            async def one():
                return "".join([out.text async for out in await engine.generate(_request())])

            texts = [await asyncio.gather(*[one() for _ in range(4)]) for _ in range(2)]
            return texts, engine.state()

    with loopback_upstream(Upstream) as url:
        texts, state = asyncio.run(asyncio.wait_for(run(url), 30))
    assert texts == [["one two"] * 4] * 2
    assert Upstream.connections == 4
    assert state.running == 0 and state.finished_total == 8


def test_a_stream_closed_before_its_first_output_gives_its_place_back():
    """A client gone before the node asked for its first output: closing the stream closes
    the upstream response and frees the stream's place (a generator closed before it started
    runs none of its cleanup)."""
    import asyncio

    async def run(url):
        async with _upstream_engine(url, max_batch=4) as engine:
            stream = await engine.generate(_request())
            held = engine.state().running
            await stream.aclose()
            await stream.aclose()  # twice is harmless
            return held, engine.state()

    with loopback_upstream(_BurstUpstream) as url:
        held, state = asyncio.run(asyncio.wait_for(run(url), 30))
    assert held == 1
    assert state.running == 0 and state.cancelled_total == 1


def test_the_upstream_is_reached_through_the_proxy_the_environment_names(monkeypatch):
    """``HTTP_PROXY`` is honoured, as by the node's other clients (looked up once, when the
    engine starts): the request goes to the proxy with the upstream's absolute URL; with the
    upstream in ``NO_PROXY`` it goes straight to the upstream, past a proxy that is down."""
    import asyncio

    from tests.fixtures.ports import free_port

    class Proxy(_KeepAliveUpstream):  # a forward proxy that answers as the upstream would
        connections = 0
        targets: list[str] = []

        def do_POST(self):
            type(self).targets.append(self.path)
            super().do_POST()

    async def ask(url):
        async with _upstream_engine(url) as engine:
            return "".join([out.text async for out in await engine.generate(_request())])

    for name in ("NO_PROXY", "no_proxy", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with loopback_upstream(Proxy) as proxy_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url.removesuffix("/v1"))
        assert asyncio.run(asyncio.wait_for(ask("http://upstream.example:8000/v1"), 30)) == "one two"
    assert Proxy.targets == ["http://upstream.example:8000/v1/chat/completions"]

    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with loopback_upstream(Proxy) as url:
        assert asyncio.run(asyncio.wait_for(ask(url), 30)) == "one two"
    assert Proxy.targets[1:] == ["/v1/chat/completions"]


class _EventsUpstream(_KeepAliveUpstream):
    """Streams the ``data`` payloads in ``events`` (raw bytes), then ``[DONE]``."""
    events: tuple[bytes, ...] = ()

    def do_POST(self):
        _start_chunked_event_stream(self)
        for data in (*self.events, b"[DONE]"):
            body = b"data: " + data + b"\n\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _chunk(content: str, finish=None) -> bytes:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": content},
                                    "finish_reason": finish}]}).encode()


def test_an_event_that_is_not_json_ends_the_stream_with_one_clear_502():
    """A garbled event mid-stream (a proxy's HTML page, a cut line) stops the stream with an
    ``UpstreamError`` whose status is 502 and whose message quotes the event; the text before
    it was already handed on. An event that is JSON but not an object is refused the same way."""
    import asyncio

    from inference.engine.upstream import UpstreamError

    async def run(url):
        got = []
        async with _upstream_engine(url) as engine:
            try:
                async for out in await engine.generate(_request()):
                    got.append(out.text)
            except UpstreamError as e:
                return got, e
        return got, None

    for bad, says in ((b"<html>bad gateway</html>", "not JSON"), (b"[1, 2]", "not a JSON object")):
        class Upstream(_EventsUpstream):
            events = (_chunk("one "), bad, _chunk("two", "stop"))

        with loopback_upstream(Upstream) as url:
            got, err = asyncio.run(asyncio.wait_for(run(url), 30))
        assert err is not None and err.status_code == 502, (bad, got)
        assert says in str(err) and bad[:10].decode() in str(err)
        assert "".join(got) == "one "


def test_an_event_with_nan_still_parses():
    """``NaN`` is not JSON, but Python's ``json`` (what vLLM's server writes with) emits it for
    a float it cannot write otherwise, e.g. a logprob; such an event is still read, not refused."""
    import asyncio

    class Upstream(_EventsUpstream):
        events = (b'{"choices": [{"index": 0, "delta": {"content": "one"}, "logprobs": NaN, '
                  b'"finish_reason": "stop"}]}',)

    async def run(url):
        async with _upstream_engine(url) as engine:
            return [out async for out in await engine.generate(_request())]

    with loopback_upstream(Upstream) as url:
        outs = asyncio.run(asyncio.wait_for(run(url), 30))
    assert "".join(o.text for o in outs) == "one" and outs[-1].finish_reason == "stop"


def test_the_upstream_request_carries_the_history_as_utf8_and_every_value_exactly():
    """The request body the upstream receives is the same JSON as before orjson wrote it:
    the conversation's text as UTF-8 (not ``\\u`` escapes, half the bytes for CJK text), and
    a value orjson cannot write (a ``seed`` past 64 bits) still sent exactly, by ``json``."""
    import asyncio

    from inference.engine.base import GenerationRequest, SamplingParams

    received = []

    class Upstream(_EventsUpstream):
        events = (_chunk("ok", "stop"),)

        def do_POST(self):
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.headers.replace_header("Content-Length", "0")
            super().do_POST()

    history = [{"role": "user", "content": "退货流程是什么？"}, {"role": "assistant", "content": "请访问订单页面。"},
               {"role": "user", "content": "订单号 12345，谢谢"}]

    async def run(url, seed):
        async with _upstream_engine(url) as engine:
            request = GenerationRequest("r", "m", history, SamplingParams(max_tokens=5, seed=seed))
            return [out async for out in await engine.generate(request)]

    with loopback_upstream(Upstream) as url:
        for seed in (7, 2**70):
            asyncio.run(asyncio.wait_for(run(url, seed), 30))
    small, large = (json.loads(body) for body in received)
    assert small["messages"] == large["messages"] == history
    assert (small["seed"], large["seed"]) == (7, 2**70)
    assert "退货流程是什么？".encode() in received[0]
