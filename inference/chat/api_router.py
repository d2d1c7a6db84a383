"""HTTP routes of the chat endpoints. HTTP only: parsing, status codes, streaming transport;
the logic is in :mod:`inference.chat.serving`."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from inference.chat.protocol import ChatCompletionRequest, ChatMessage, PromptRequest
from inference.chat.serving import ChatService
from inference.engine.base import EngineError
from inference.event_stream import EventStreamResponse
from inference.http_errors import InvalidRequest, engine_error_response, parse_body

router = APIRouter()

_CHAT_SCHEMA = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}}
# (the nested models' ``$defs`` are moved to components.schemas by inference.openapi)


def _service(request: Request) -> ChatService:
    return request.app.state.chat


def _id_headers(ctx) -> dict[str, str]:
    return {"X-Request-Id": ctx.request_id, "X-Session-Id": ctx.session_id}


async def _until_disconnected(request: Request, coro):
    """Run ``coro``; cancel it if the client disconnects first (non-streaming requests)."""
    task = asyncio.ensure_future(coro)
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=0.25)
        if not done and await request.is_disconnected():
            task.cancel()
            break
    return await task


async def _chat(request: Request, endpoint: str):
    service = _service(request)
    req = await parse_body(request, ChatCompletionRequest)
    ctx = service.context(req, request.headers, endpoint, getattr(request.state, "arrival", None))
    try:
        outputs = await service.start(req, ctx)
    except EngineError as exc:
        resp = engine_error_response(exc)
        resp.headers.update(_id_headers(ctx))
        return resp
    if req.stream:
        return EventStreamResponse(service.stream(req, ctx, outputs),
                                   headers={**_id_headers(ctx), "Cache-Control": "no-cache",
                                            "X-Accel-Buffering": "no"})
    try:
        body = await _until_disconnected(request, service.complete(req, ctx, outputs))
    except EngineError as exc:
        resp = engine_error_response(exc)
        resp.headers.update(_id_headers(ctx))
        return resp
    return JSONResponse(body, headers=_id_headers(ctx))


@router.post("/v1/chat/completions", openapi_extra=_CHAT_SCHEMA)
async def chat_completions(request: Request):
    """OpenAI-compatible chat completions, streaming (SSE) and not."""
    return await _chat(request, "/v1/chat/completions")


@router.post("/chat/completions", openapi_extra=_CHAT_SCHEMA)
async def chat_completions_no_v1(request: Request):
    """The same, without ``/v1``: NextChat's DeepSeek provider posts here."""
    return await _chat(request, "/chat/completions")


@router.post("/chat", openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
    "schema": PromptRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
async def seed_chat(request: Request):
    """A minimal endpoint for scripts and curl: ``{"prompt": "..."}`` in, the reply out."""
    service = _service(request)
    body = await parse_body(request, PromptRequest)
    model = service.served_model_names[0]
    req = ChatCompletionRequest(model=model, messages=[ChatMessage(role="user", content=body.prompt)],
                                max_tokens=body.max_tokens, temperature=body.temperature)
    ctx = service.context(req, request.headers, "/chat", getattr(request.state, "arrival", None))
    try:
        outputs = await service.start(req, ctx)
        result = await _until_disconnected(request, service.complete(req, ctx, outputs))
    except EngineError as exc:
        return engine_error_response(exc)
    choice = result["choices"][0]
    return JSONResponse({"response": choice["message"]["content"], "finish_reason": choice["finish_reason"],
                         "model": model, "request_id": ctx.request_id, "session_id": ctx.session_id,
                         "usage": result["usage"]}, headers=_id_headers(ctx))


__all__ = ["router", "InvalidRequest"]
