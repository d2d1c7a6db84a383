"""inference.event_stream: the streamed reply's ASGI response, driven with ASGI messages
directly (the node-level tests drive it through uvicorn)."""
from __future__ import annotations

import asyncio

import pytest

from inference.event_stream import EventStreamResponse

SCOPE = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}}


def test_every_event_is_written_and_the_reply_ends():
    sent = []

    async def main():
        async def events():
            yield "data: 1\n\n"
            yield "data: 2\n\n"

        async def receive():  # a client that stays
            await asyncio.Event().wait()

        async def send(message):
            sent.append(message)

        await asyncio.wait_for(EventStreamResponse(events())(SCOPE, receive, send), 5)

    asyncio.run(main())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in sent[0]["headers"]
    assert [(m["body"], m["more_body"]) for m in sent[1:]] == [(b"data: 1\n\n", True), (b"data: 2\n\n", True),
                                                             (b"", False)]


def test_a_disconnect_while_nothing_is_written_stops_the_reply_and_runs_its_cleanup():
    """The reply waits for an event that never comes (a request queued for a slot); the
    client leaves: the events' generator is closed (its ``finally`` runs, which is where
    the chat service ends the turn) and the response returns without an error."""
    sent, cleaned = [], asyncio.Event()

    async def main():
        gone = asyncio.Event()

        async def events():
            try:
                yield "data: head\n\n"
                await asyncio.Event().wait()  # the first token never comes
                yield "data: never\n\n"
            finally:
                cleaned.set()

        async def receive():
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            if message.get("body") == b"data: head\n\n":
                gone.set()

        await asyncio.wait_for(EventStreamResponse(events())(SCOPE, receive, send), 5)

    asyncio.run(main())
    assert cleaned.is_set()
    assert [m.get("body") for m in sent[1:]] == [b"data: head\n\n"]


def test_an_error_of_the_writer_reaches_the_caller():
    async def main():
        async def events():
            yield "data: 1\n\n"
            raise RuntimeError("the reply broke")

        async def receive():
            await asyncio.Event().wait()

        async def send(message):
            pass

        await asyncio.wait_for(EventStreamResponse(events())(SCOPE, receive, send), 5)

    with pytest.raises(RuntimeError, match="the reply broke"):
        asyncio.run(main())
