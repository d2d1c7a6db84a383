"""Engine that streams through to any OpenAI-compatible server (vLLM, SGLang, the DeepSeek API).

Teams that outgrow one in-process node keep the same instrumentation: the node in front still
measures latency and TTFT as its clients see them, masks and logs every turn, and counts
everything, while the upstream does the generating.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterator

import httpx

from contracts.sse import aiter_data
from inference.engine.base import (
    Engine, EngineOutput, EngineState, GenerationRequest, OutputStream, QueueFull, UpstreamError,
)
from inference.engine.registry import EnginePlugin, register

_CJK = re.compile(r"[\u3000-\u9fff\uac00-\ud7af\uff00-\uffef]")

#: Streams per connection pool. httpcore's pool looks at every connection it holds (a
#: readability poll of each idle socket) whenever a request starts or ends; with one pool
#: of 256 connections that scan was a quarter of the node's CPU at 256 streams. The node
#: keeps several smaller pools and sends each request to the least busy.
STREAMS_PER_POOL = 16


def estimate_tokens(text: str) -> int:
    """Rough token count when the upstream reports no usage: one per CJK character, one per
    four other characters. Only used as a fallback, and documented as such."""
    return _TokenEstimate().add(text)


class _TokenEstimate:
    """:func:`estimate_tokens` of a growing text, kept as running counts: re-counting the
    whole reply at every streamed token made relaying quadratic in the reply's length."""

    def __init__(self):
        self.cjk = self.chars = 0

    def add(self, text: str) -> int:
        self.cjk += len(_CJK.findall(text))
        self.chars += len(text)
        return self.cjk + (self.chars - self.cjk + 3) // 4


class UpstreamEngine(Engine):
    def __init__(self, base_url: str, *, api_key: str | None = None, model: str | None = None,
                 max_batch: int = 256, max_queue: int = 1024, timeout_s: float = 600.0,
                 model_version: str | None = None, verify: bool | Any = True):
        base = base_url.rstrip("/")
        self.url = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self._url = httpx.URL(self.url)  # parsed once: httpx parses a string URL on every request
        self.api_key = api_key
        self.upstream_model = model
        self.max_batch, self.max_queue = max_batch, max_queue
        self.timeout_s = timeout_s
        self.verify = verify
        self._model_version = model_version or (model or "upstream")
        self._clients: list[httpx.AsyncClient] = []
        self._busy: list[int] = []  # requests in flight per client
        self._in_flight = 0
        self._finished = 0
        self._cancelled = 0
        self.reasoning = True  # passed through when the upstream sends reasoning_content

    @property
    def model_version(self) -> str:
        return self._model_version

    async def start(self) -> None:
        # every running stream keeps its connection between requests: with fewer kept alive,
        # the pool closed the rest after each response and the next request opened a new one
        pools = -(-self.max_batch // STREAMS_PER_POOL)
        limits = httpx.Limits(max_connections=-(-(self.max_batch + self.max_queue) // pools),
                              max_keepalive_connections=-(-self.max_batch // pools))
        self._clients = [httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s, connect=10.0),
                                           limits=limits, verify=self.verify) for _ in range(pools)]
        self._busy = [0] * pools

    async def stop(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            await client.aclose()

    def state(self) -> EngineState:
        running = min(self._in_flight, self.max_batch)
        return EngineState(ready=bool(self._clients), running=running,
                           waiting=self._in_flight - running, max_batch=self.max_batch,
                           max_queue=self.max_queue, cancelled_total=self._cancelled,
                           finished_total=self._finished)

    def _payload(self, request: GenerationRequest) -> dict:
        sp = request.sampling
        body: dict = {
            "model": self.upstream_model or request.model,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": sp.temperature,
            "top_p": sp.top_p,
        }
        if sp.max_tokens is not None:
            body["max_tokens"] = sp.max_tokens
        if sp.stop:
            body["stop"] = list(sp.stop)
        if sp.presence_penalty:
            body["presence_penalty"] = sp.presence_penalty
        if sp.frequency_penalty:
            body["frequency_penalty"] = sp.frequency_penalty
        if sp.ignore_eos:
            body["ignore_eos"] = True
        if sp.min_tokens:
            body["min_tokens"] = sp.min_tokens
        if sp.seed is not None:
            body["seed"] = sp.seed
        if request.user:
            body["user"] = request.user
        return body

    async def generate(self, request: GenerationRequest) -> AsyncIterator[EngineOutput]:
        if not self._clients:
            from inference.engine.base import EngineNotReady
            raise EngineNotReady("the upstream client is not started")
        if self._in_flight >= self.max_batch + self.max_queue:
            raise QueueFull(f"the server is at capacity ({self.max_queue} requests waiting); retry shortly")
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        pool = min(range(len(self._busy)), key=self._busy.__getitem__)
        client = self._clients[pool]
        self._in_flight += 1
        self._busy[pool] += 1
        t0 = time.monotonic()
        try:
            req = client.build_request("POST", self._url, json=self._payload(request), headers=headers)
            resp = await client.send(req, stream=True)
        except httpx.HTTPError as exc:
            self._release(pool)
            raise UpstreamError(f"upstream {self.url} unreachable: {exc.__class__.__name__}", 502) from None
        if resp.status_code != 200:
            body = (await resp.aread()).decode("utf-8", "replace")
            await resp.aclose()
            self._release(pool)
            try:
                err = json.loads(body).get("error", {})
                message, code = err.get("message") or body[:200], err.get("code")
            except (ValueError, AttributeError):
                message, code = body[:200], None
            status = resp.status_code if resp.status_code in (400, 404, 413, 429) else 502
            raise UpstreamError(f"upstream answered {resp.status_code}: {message}", status, code)
        # the reader starts now, while the node sends its response's head: the first event
        # is decoded by the time the reply's writer asks for it
        queue: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(_read_events(resp, queue))
        return OutputStream(self._stream(resp, request, t0, pool, queue, reader),
                            lambda: self._end(resp, reader, pool, False))

    def _release(self, pool: int) -> None:
        self._in_flight -= 1
        self._busy[pool] -= 1

    async def _stream(self, resp: httpx.Response, request: GenerationRequest, t0: float, pool: int,
                      queue: asyncio.Queue, reader: asyncio.Task) -> AsyncIterator[EngineOutput]:
        """Relay the upstream's events. A reader task (:func:`_read_events`) queues them as they are decoded; each
        output carries every event that piled up since the last one (as the in-process
        engine sends a stream's queued tokens as one chunk). A fast upstream delivers many
        events per network read, and one relayed chunk per event cost the node a JSON
        encoding and a socket write per token."""
        first, finish, usage = True, None, None
        reply = _TokenEstimate()
        completion_est = 0
        prompt_est = estimate_tokens("".join(m.get("content") or "" for m in request.messages))
        done = False
        try:
            ended = False
            while not ended:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                texts, reasonings = [], []
                for data in items:
                    if data is None:
                        ended = True
                        break
                    if isinstance(data, Exception):
                        raise data
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise UpstreamError(f"upstream error mid-stream: {chunk['error'].get('message')}", 502)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        texts.append(delta.get("content") or "")
                        reasonings.append(delta.get("reasoning_content") or "")
                        finish = choice.get("finish_reason") or finish
                text, reasoning = "".join(texts), "".join(reasonings)
                if text or reasoning:
                    completion_est = reply.add(text + reasoning)
                if text or reasoning or (first and texts):
                    yield EngineOutput(text=text, reasoning=reasoning, prompt_tokens=prompt_est,
                                       completion_tokens=completion_est, queue_s=0.0 if first else None)
                    first = False
            prompt = usage.get("prompt_tokens", prompt_est) if usage else prompt_est
            completion = usage.get("completion_tokens") if usage else None
            done = True
            yield EngineOutput(finish_reason=finish or "stop", prompt_tokens=prompt,
                               completion_tokens=completion if completion is not None else completion_est)
        except httpx.HTTPError as exc:  # the stream broke, or the 200 was no event stream (contracts.sse)
            raise UpstreamError(f"upstream stream failed: {exc.__class__.__name__}: {exc}", 502) from None
        finally:
            await self._end(resp, reader, pool, done)

    async def _end(self, resp: httpx.Response, reader: asyncio.Task, pool: int, done: bool) -> None:
        """A relayed stream is over (``done``: to its end): stop reading, give the connection
        back, count it."""
        self._release(pool)
        if done:
            self._finished += 1
        else:
            self._cancelled += 1
        reader.cancel()
        try:
            await reader
        except BaseException:  # its cancellation, or an error already handed over
            pass
        await resp.aclose()


async def _read_events(resp: httpx.Response, queue: asyncio.Queue) -> None:
    """Queue the ``data`` of each upstream event as it is decoded, then None; an error is
    queued too, for the consumer to raise in the request's context."""
    try:
        async with aclosing(aiter_data(resp)) as events:
            first_event = True
            async for data in events:
                queue.put_nowait(data)
                if first_event:
                    # events already buffered are decoded without suspending: without this
                    # pause a fast upstream's whole reply was decoded before its first token
                    # went on. Later ones go in one chunk per network read.
                    first_event = False
                    await asyncio.sleep(0)
    except Exception as exc:
        queue.put_nowait(exc)
        return
    queue.put_nowait(None)


# --------------------------------------------------------------------------- plug-in
@dataclass(frozen=True)
class UpstreamOptions:
    """``serve --engine upstream`` options."""

    url: str
    model: str | None = None          # the model name to ask the upstream for (default: the client's)
    ca_bundle: str | None = None      # verify the upstream's certificate against this CA file
    api_key_env: str = "SEEKWATCH_UPSTREAM_API_KEY"


def _add_arguments(g) -> None:
    g.add_argument("--upstream-url", metavar="URL", help="OpenAI-compatible base URL, e.g. http://vllm:8000/v1 (required)")
    g.add_argument("--upstream-model", help="model name to ask the upstream for (default: the client's)")
    g.add_argument("--upstream-ca-bundle", metavar="PEM", help="CA certificates to verify an https upstream against (default: the system's)")


def _options_from_args(args) -> UpstreamOptions:
    import os

    from contracts.config import ConfigError

    if not args.upstream_url:
        raise ConfigError("--upstream-url URL is required with --engine upstream")
    if args.upstream_ca_bundle and not os.path.isfile(args.upstream_ca_bundle):
        raise ConfigError(f"--upstream-ca-bundle {args.upstream_ca_bundle}: no such file")
    return UpstreamOptions(url=args.upstream_url, model=args.upstream_model, ca_bundle=args.upstream_ca_bundle)


def _build(options: UpstreamOptions, config) -> UpstreamEngine:
    import os

    verify: bool | Any = True  # certificates are always verified; a CA bundle narrows whom to trust
    if options.ca_bundle:
        import ssl

        verify = ssl.create_default_context(cafile=options.ca_bundle)
    return UpstreamEngine(options.url, api_key=os.environ.get(options.api_key_env), model=options.model,
                          max_batch=config.max_batch, max_queue=config.max_queue,
                          model_version=config.model_version, verify=verify)


register(EnginePlugin(
    name="upstream", help="stream through to an OpenAI-compatible server (vLLM, SGLang, the DeepSeek API)",
    add_arguments=_add_arguments, options_from_args=_options_from_args, build=_build,
    model_names=lambda o: [o.model] if o.model else []))
