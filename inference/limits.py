"""Request-body size limit, enforced on chunked bodies too.

NextChat's server forwards bodies with ``Transfer-Encoding: chunked`` and no Content-Length,
so a limit that only looks at Content-Length would let any size through. This ASGI
middleware rejects a declared size over the limit at once, and counts the bytes of a chunked
body as they arrive, failing the read as soon as the limit is passed.
"""
from __future__ import annotations

import json


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"Request body is larger than the limit of {limit} bytes.")
        self.limit = limit


def too_large_body(limit: int) -> bytes:
    return json.dumps({"error": {"message": str(BodyTooLarge(limit)), "type": "invalid_request_error",
                                 "param": None, "code": "request_too_large"}}).encode()


class BodySizeLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    return await _send_413(send, self.max_bytes)
        seen = 0
        limit = self.max_bytes

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


async def _send_413(send, limit: int) -> None:
    body = too_large_body(limit)
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
