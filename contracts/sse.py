"""The one Server-Sent Events reader, for every client of an OpenAI-style stream: the node's
upstream engine (``inference.engine.upstream``) and the load generator (``seekwatch.loadgen``).

Parsing is httpx-sse's: lines split at CR, LF and CRLF only, as the SSE specification says.
(httpx's own ``aiter_lines`` uses ``str.splitlines``, which also breaks at U+2028, U+2029 and
NEL: legal raw inside JSON strings, so a model's answer containing one would arrive cut in
two.) A response that is not ``text/event-stream`` raises :class:`SSEError`, an
``httpx.TransportError``, so callers handle it as the broken transfer it is.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

import httpx
from httpx_sse import EventSource, SSEError

#: the data of the event that ends an OpenAI-style stream
DONE = "[DONE]"


#: how long the rest of a body after ``[DONE]`` is waited for (see :func:`aiter_data`)
DRAIN_S = 1.0


async def aiter_data(response: httpx.Response) -> AsyncIterator[str]:
    """The ``data`` of each event of an OpenAI-style stream, up to (without) ``[DONE]``.

    After ``[DONE]`` the rest of the body (normally just the end of the chunked transfer)
    is read and dropped, for at most :data:`DRAIN_S`: a response closed before its end
    closes its connection too, and the next request would open a new one (a TCP, maybe
    TLS, handshake in front of every first token). A server that keeps the body open
    longer loses its connection, as before."""
    events = EventSource(response).aiter_sse()
    async for event in events:
        if event.data == DONE:
            try:
                async with asyncio.timeout(DRAIN_S):
                    async for _ in events:
                        pass
            except (TimeoutError, httpx.HTTPError):
                pass
            return
        if event.data:
            yield event.data


__all__ = ["DONE", "SSEError", "aiter_data"]
