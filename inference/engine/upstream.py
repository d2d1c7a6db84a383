"""Engine that streams through to any OpenAI-compatible server (vLLM, SGLang, the DeepSeek API).

Teams that outgrow one in-process node keep the same instrumentation: the node in front still
measures latency and TTFT as its clients see them, masks and logs every turn, and counts
everything, while the upstream does the generating.
"""
from __future__ import annotations

import asyncio
import json
import re
import ssl
from dataclasses import dataclass
from typing import AsyncIterator

import aiohttp
import orjson
import yarl

from contracts import sse
from inference.engine.base import (
    Engine, EngineNotReady, EngineOutput, EngineState, GenerationRequest, OutputStream, QueueFull, UpstreamError,
)
from inference.engine.registry import EnginePlugin, register

_CJK = re.compile(r"[\u3000-\u9fff\uac00-\ud7af\uff00-\uffef]")

#: How long an idle connection to the upstream is kept. Under the 5 s after which vLLM's and
#: SGLang's servers (uvicorn) close an idle one: a request sent on a connection the server is
#: closing at that moment fails, and a POST is not retried.
KEEPALIVE_S = 4.0

#: What a failed connection or transfer raises in aiohttp (its timeouts are both).
_TRANSFER_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


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
    """Relays through aiohttp: its HTTP parser and connection pool are C and O(1) per request,
    where httpx's (h11 in Python, a pool that polled every idle connection at each request's
    start and end) cost the node three times the CPU per relayed token
    (docs/benchmarks.md, "Serving in front of another engine")."""

    def __init__(self, base_url: str, *, api_key: str | None = None, model: str | None = None,
                 max_batch: int = 256, max_queue: int = 1024, timeout_s: float = 600.0,
                 model_version: str | None = None, verify: bool | ssl.SSLContext = True):
        base = base_url.rstrip("/")
        self.url = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self.api_key = api_key
        self.upstream_model = model
        self.max_batch, self.max_queue = max_batch, max_queue
        self.timeout_s = timeout_s
        self.verify = verify
        self._model_version = model_version or (model or "upstream")
        self._session: aiohttp.ClientSession | None = None
        self._proxy: yarl.URL | None = None
        self._proxy_auth: aiohttp.BasicAuth | None = None
        self._in_flight = 0
        self._finished = 0
        self._cancelled = 0
        self.reasoning = True  # passed through when the upstream sends reasoning_content

    @property
    def model_version(self) -> str:
        return self._model_version

    async def start(self) -> None:
        # every stream, running or queued, may hold a connection; a stream read to its end
        # gives its connection back for the next request (see _drain)
        connector = aiohttp.TCPConnector(limit=self.max_batch + self.max_queue, limit_per_host=0,
                                         keepalive_timeout=KEEPALIVE_S, ssl=self.verify)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=self.timeout_s))
        # a proxy from HTTPS_PROXY / HTTP_PROXY / NO_PROXY (and its login from .netrc), as the
        # node's other clients take them: looked up once here, where aiohttp's trust_env looks
        # it up in a thread at every request (a sixth of the node's CPU when relaying)
        try:
            self._proxy, self._proxy_auth = aiohttp.helpers.get_env_proxy_for_url(yarl.URL(self.url))
        except LookupError:  # none, or the upstream is in NO_PROXY
            self._proxy = self._proxy_auth = None

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def state(self) -> EngineState:
        running = min(self._in_flight, self.max_batch)
        return EngineState(ready=self._session is not None, running=running,
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
        if self._session is None:
            raise EngineNotReady("the upstream client is not started")
        if self._in_flight >= self.max_batch + self.max_queue:
            raise QueueFull(f"the server is at capacity ({self.max_queue} requests waiting); retry shortly")
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self._in_flight += 1
        try:
            resp = await self._session.post(self.url, data=_encode(self._payload(request)), headers=headers,
                                            proxy=self._proxy, proxy_auth=self._proxy_auth)
        except _TRANSFER_ERRORS as exc:
            self._in_flight -= 1
            raise UpstreamError(f"upstream {self.url} unreachable: {exc.__class__.__name__}", 502) from None
        try:
            if resp.status != 200:
                body = await resp.text(errors="replace")
                try:
                    err = json.loads(body).get("error", {})
                    message, code = err.get("message") or body[:200], err.get("code")
                except (ValueError, AttributeError):
                    message, code = body[:200], None
                status = resp.status if resp.status in (400, 404, 413, 429) else 502
                raise UpstreamError(f"upstream answered {resp.status}: {message}", status, code)
            if resp.content_type != "text/event-stream":  # it ignored ``stream: true``
                raise UpstreamError(f"upstream answered 200 with {resp.content_type or 'no content type'}, "
                                    "expected text/event-stream", 502)
        except BaseException as exc:
            resp.close()
            self._in_flight -= 1
            if isinstance(exc, _TRANSFER_ERRORS):
                raise UpstreamError(f"upstream stream failed: {exc.__class__.__name__}: {exc}", 502) from None
            raise
        return OutputStream(self._stream(resp, request), lambda: self._end(resp, False))

    async def _stream(self, resp: aiohttp.ClientResponse, request: GenerationRequest) -> AsyncIterator[EngineOutput]:
        """Relay the upstream's events: one output per network read, carrying every event the
        read completed (as the in-process engine sends a stream's queued tokens as one chunk;
        one relayed chunk per event cost the node a JSON encoding and a socket write per
        token), except the very first event, which goes on alone at once (a fast upstream's
        whole reply may already sit in one read)."""
        first, finish, usage = True, None, None
        reply = _TokenEstimate()
        completion_est = 0
        prompt_est = estimate_tokens("".join(m.get("content") or "" for m in request.messages))
        events = sse.DataDecoder()
        done = False
        try:
            while not events.done:
                data = await resp.content.readany()
                if not data:  # the body ended without [DONE]
                    break
                items = events.feed(data)
                for group in ((items[:1], items[1:]) if first and len(items) > 1 else (items,)):
                    texts, reasonings = [], []
                    for item in group:
                        chunk = _event_json(item)
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
            if events.done:
                await _drain(resp)
            prompt = usage.get("prompt_tokens", prompt_est) if usage else prompt_est
            completion = usage.get("completion_tokens") if usage else None
            done = True
            yield EngineOutput(finish_reason=finish or "stop", prompt_tokens=prompt,
                               completion_tokens=completion if completion is not None else completion_est)
        except _TRANSFER_ERRORS as exc:  # the stream broke or stalled past the read timeout
            raise UpstreamError(f"upstream stream failed: {exc.__class__.__name__}: {exc}", 502) from None
        finally:
            await self._end(resp, done)

    async def _end(self, resp: aiohttp.ClientResponse, done: bool) -> None:
        """A relayed stream is over (``done``: to its end): count it, and close the upstream
        response (a no-op for one read to its end, whose connection is back in the pool; an
        unfinished one's connection is dropped)."""
        self._in_flight -= 1
        if done:
            self._finished += 1
        else:
            self._cancelled += 1
        resp.close()


def _encode(body: dict) -> bytes:
    """The upstream request's JSON. orjson writes a conversation's history in a fraction of
    ``json.dumps``'s time (the whole history goes upstream on every turn); what it refuses
    (an integer past 64 bits, say a client's ``seed``) is written by ``json``."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()


def _event_json(data: str) -> dict:
    """One event's JSON object. orjson parses a relayed chunk in a third of the time of
    ``json.loads`` (which was a fifth of the node's CPU per relayed token); what orjson
    refuses and ``json`` takes (NaN, Infinity) still parses. An event
    that is no JSON object ends the stream with a 502 that says so."""
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            chunk = json.loads(data)
        except ValueError:
            raise UpstreamError(f"upstream sent an event that is not JSON: {data[:80]!r}", 502) from None
    if not isinstance(chunk, dict):
        raise UpstreamError(f"upstream sent an event that is not a JSON object: {data[:80]!r}", 502)
    return chunk


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read what follows ``[DONE]`` (normally just the end of the chunked body), for at most
    ``sse.DRAIN_S``: a response read to its end gives its connection back to the pool, where
    one closed earlier would close it, and the next request would open a new one (a TCP,
    maybe TLS, handshake in front of every first token). A server that keeps the body open
    longer loses its connection."""
    try:
        async with asyncio.timeout(sse.DRAIN_S):
            while await resp.content.readany():
                pass
    except _TRANSFER_ERRORS:
        pass


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

    verify: bool | ssl.SSLContext = True  # certificates are always verified; a CA bundle narrows whom to trust
    if options.ca_bundle:
        verify = ssl.create_default_context(cafile=options.ca_bundle)
    return UpstreamEngine(options.url, api_key=os.environ.get(options.api_key_env), model=options.model,
                          max_batch=config.max_batch, max_queue=config.max_queue,
                          model_version=config.model_version, verify=verify)


register(EnginePlugin(
    name="upstream", help="stream through to an OpenAI-compatible server (vLLM, SGLang, the DeepSeek API)",
    add_arguments=_add_arguments, options_from_args=_options_from_args, build=_build,
    model_names=lambda o: [o.model] if o.model else []))
