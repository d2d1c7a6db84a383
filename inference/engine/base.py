"""The engine interface: what the serving layer asks of any engine, and what it gets back.

Kept free of torch so the HTTP layer, the tests and the upstream engine can import it cheaply.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings; every request in a batch keeps its own."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False
    min_tokens: int = 0
    seed: int | None = None


@dataclass
class GenerationRequest:
    """One chat turn for an engine: the conversation and how to sample the reply."""

    request_id: str
    model: str
    messages: list[dict[str, str]]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    user: str | None = None


@dataclass
class EngineOutput:
    """One increment of a reply. ``finish_reason`` is set on the last one only.

    ``queue_s`` (time spent waiting for a batch slot) is set on the first output.
    Token counts are running totals, so the last output carries the usage.
    """

    text: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_s: float | None = None


class EngineError(Exception):
    """Base of the errors an engine raises before a reply starts; mapped to HTTP statuses."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None
    #: prompt tokens the engine counted before refusing (0 when it did not get that far), so a
    #: rejected record says how long the refused prompt was
    prompt_tokens: int = 0


class EngineNotReady(EngineError):
    status_code = 503
    error_type = "service_unavailable"
    code = "model_not_ready"


class QueueFull(EngineError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "queue_full"

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ContextLengthExceeded(EngineError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "context_length_exceeded"


class UpstreamError(EngineError):
    """The upstream server answered with an error; its status is passed through."""

    error_type = "upstream_error"

    def __init__(self, message: str, status_code: int = 502, code: str | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.code = code


@dataclass
class EngineState:
    """What ops and the tests can see of an engine right now."""

    ready: bool
    running: int
    waiting: int
    max_batch: int
    max_queue: int
    cancelled_total: int = 0
    finished_total: int = 0
    #: How decode steps run, for engines that have a choice (``cuda-graphs (…)`` or
    #: ``eager (why)``); None for engines that do not decode themselves.
    decode_path: str | None = None
    #: Which attention kernel reads the KV store (``FlashAttention (variable length)`` or
    #: ``masked SDPA (why)``); None for engines that do not decode themselves.
    attention_path: str | None = None
    #: How prefill steps run (``cuda-graphs (…)``, ``eager (…)``); None likewise.
    prefill_path: str | None = None
    #: Why the engine can no longer serve at all, so that only a restart helps (a device
    #: fault, or its own process exited); None while it can. ``/healthz`` fails on it.
    failed: str | None = None


class OutputStream:
    """What ``generate`` returns: the engine's generator of outputs, with an ``aclose`` that
    also ends a stream nobody asked an output of (a client gone between admission and its
    first token). Closing a generator that never started runs none of its code, so its own
    ``finally`` cannot free the batch slot; ``abandon`` (a coroutine function) does it then."""

    def __init__(self, outputs: AsyncIterator[EngineOutput], abandon: Callable[[], Awaitable[None]]):
        self._outputs, self._abandon = outputs, abandon
        self._started = False

    def __aiter__(self) -> "OutputStream":
        return self

    async def __anext__(self) -> EngineOutput:
        self._started = True
        return await self._outputs.__anext__()

    async def aclose(self) -> None:
        started, self._started = self._started, True
        await self._outputs.aclose()
        if not started:
            await self._abandon()


class Engine(abc.ABC):
    """An engine turns a :class:`GenerationRequest` into a stream of :class:`EngineOutput`.

    ``generate`` raises an :class:`EngineError` before yielding anything when the request
    cannot start (not ready, queue full, prompt too long). Closing the iterator early (a
    client disconnect) cancels the generation and frees its batch slot, also before its
    first output was asked for (:class:`OutputStream`).
    """

    #: Whether replies may carry DeepSeek-R1 style reasoning (``<think>`` … ``</think>``).
    reasoning: bool = False

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> AsyncIterator[EngineOutput]:
        """Admit ``request`` (raising :class:`EngineError` if it cannot start) and return its
        stream of outputs."""

    @abc.abstractmethod
    def state(self) -> EngineState: ...

    @property
    @abc.abstractmethod
    def model_version(self) -> str:
        """The model's name and revision, as logged in each record's ``model_version``."""

    @property
    def max_model_len(self) -> int | None:
        return None
