"""OpenAI-shaped errors for every failure the HTTP layer can meet.

Clients (NextChat, the ``openai`` package) show ``error.message`` to the user, so each message
says what was wrong in words a user understands.
"""
from __future__ import annotations

import json

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from inference.chat.protocol import error_body
from inference.engine.base import EngineError, QueueFull


class InvalidRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status_code: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status_code, self.code = param, status_code, code


def error_response(status: int, message: str, error_type: str = "invalid_request_error",
                   code: str | None = None, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, error_type, code, param), status_code=status, headers=headers)


def engine_error_response(exc: EngineError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, QueueFull) else None
    return error_response(exc.status_code, str(exc), exc.error_type, exc.code, headers=headers)


def _describe(err: dict) -> tuple[str, str | None]:
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = err.get("msg", "invalid value")
    if err.get("type") == "missing":
        return f"'{param}' is required", param
    if err.get("type") == "literal_error" and loc and loc[-1] == "role":
        return f"Invalid role at {param}: {msg}", param
    msg = msg.removeprefix("Value error, ")
    return (f"Invalid value for '{param}': {msg}" if param else msg), param


async def parse_body(request: Request, model: type[BaseModel]):
    """Read and validate a JSON body; raises :class:`InvalidRequest` with a clear message."""
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        text = raw.decode("utf-8")  # RFC 8259: JSON between systems is UTF-8
    except UnicodeDecodeError:
        raise InvalidRequest("The request body is not valid UTF-8.") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}).") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = _describe(exc.errors()[0])
        raise InvalidRequest(message, param) from None
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None
