"""The one Server-Sent Events reader, for every client of an OpenAI-style stream: the node's
upstream engine (``inference.engine.upstream``, through :class:`DataDecoder`, as it reads the
upstream with aiohttp) and the load generator (``seekwatch.loadgen``, through
:func:`aiter_data` on an httpx response).

Lines are split by httpx-sse: at CR, LF and CRLF only, as the SSE specification says.
(httpx's own ``aiter_lines`` uses ``str.splitlines``, which also breaks at U+2028, U+2029 and
NEL: legal raw inside JSON strings, so a model's answer containing one would arrive cut in
two.) A response that is not ``text/event-stream`` raises :class:`SSEError`, an
``httpx.TransportError``, so callers handle it as the broken transfer it is.
"""
from __future__ import annotations

import asyncio
import codecs
from typing import AsyncIterator

import httpx
from httpx_sse import EventSource, SSEError
# the line decoder EventSource itself runs, fed here with bytes from any transport (a private
# module: pyproject admits the minor version this was read against, not the next)
from httpx_sse._decoders import SSELineDecoder

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


class DataDecoder:
    """:func:`aiter_data` for bytes as they arrive from any transport: :meth:`feed` takes the
    next piece of the body and returns the ``data`` of each event it completes, up to
    (without) ``[DONE]``, after which :attr:`done` is true and the rest is ignored. UTF-8
    characters and lines split across pieces are put back together; an event that the body
    ends in the middle of is dropped, as the SSE specification says.

    Lines are split by httpx-sse's line decoder (CR, LF, CRLF, across pieces). The fields are
    read here, for ``data`` alone: a relayed stream is one event per token, and httpx-sse's
    event decoder, which builds a ``ServerSentEvent`` with every field for each, was 3 µs of
    the node's CPU per relayed token. The rules are the specification's (``data`` lines
    joined with LF, one leading space dropped, comment lines and other fields ignored), and
    a test holds the result to httpx-sse's own decoder on generated streams."""

    def __init__(self):
        self._text = codecs.getincrementaldecoder("utf-8")("replace")
        self._lines = SSELineDecoder()
        self._data: list[str] = []  # the data lines of the event being read
        self.done = False

    def feed(self, data: bytes) -> list[str]:
        out: list[str] = []
        if self.done:
            return out
        pending = self._data
        for line in self._lines.decode(self._text.decode(data)):
            if not line:  # the end of an event
                if pending:
                    value = pending[0] if len(pending) == 1 else "\n".join(pending)
                    pending.clear()
                    if value == DONE:
                        self.done = True
                        break
                    if value:
                        out.append(value)
            elif line.startswith("data"):
                if len(line) == 4:  # "data" alone: an empty data line
                    pending.append("")
                elif line[4] == ":":
                    pending.append(line[6:] if line.startswith(" ", 5) else line[5:])
                # "data" followed by anything but ":" is another field's name: ignored
        return out


__all__ = ["DONE", "DataDecoder", "SSEError", "aiter_data"]
