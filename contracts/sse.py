"""The one Server-Sent Events reader, for every client of an OpenAI-style stream: the node's
upstream engine (``inference.engine.upstream``) and the load generator (``seekwatch.loadgen``).

Parsing is httpx-sse's: lines split at CR, LF and CRLF only, as the SSE specification says.
(httpx's own ``aiter_lines`` uses ``str.splitlines``, which also breaks at U+2028, U+2029 and
NEL: legal raw inside JSON strings, so a model's answer containing one would arrive cut in
two.) A response that is not ``text/event-stream`` raises :class:`SSEError`, an
``httpx.TransportError``, so callers handle it as the broken transfer it is.
"""
from __future__ import annotations

from typing import AsyncIterator

import httpx
from httpx_sse import EventSource, SSEError

#: the data of the event that ends an OpenAI-style stream
DONE = "[DONE]"


async def aiter_data(response: httpx.Response) -> AsyncIterator[str]:
    """The ``data`` of each event of an OpenAI-style stream, up to (without) ``[DONE]``."""
    async for event in EventSource(response).aiter_sse():
        if event.data == DONE:
            return
        if event.data:
            yield event.data


__all__ = ["DONE", "SSEError", "aiter_data"]
