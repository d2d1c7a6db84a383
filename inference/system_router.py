"""Routes for clients and operators that are not chat: model list, health, readiness, metrics.

Two routers because they are protected differently: the model list needs the API key when
keys are configured (as on OpenAI and vLLM); the probes and ``/metrics`` only with
``--auth-probes``."""
from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

router = APIRouter()
models_router = APIRouter()


@models_router.get("/v1/models")
async def list_models(request: Request):
    """OpenAI's model list: every served alias of the loaded model."""
    created = request.app.state.started_at
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "seekwatch"}
        for name in request.app.state.chat.served_model_names]}


@router.get("/healthz")
async def healthz(request: Request):
    """Liveness: the process answers and its engine has not failed for good (a device
    fault, or the engine's own process exited). Kubernetes restarts the pod when this fails;
    a model still loading is readiness, not liveness."""
    failed = request.app.state.engine.state().failed
    if failed:
        return JSONResponse({"status": "failed", "error": failed, "time": time.time()}, status_code=503)
    return {"status": "ok", "time": time.time()}


@router.get("/readyz")
async def readyz(request: Request):
    """Readiness: the model is loaded and the engine accepts requests; also the engine's
    running/waiting counts, which the tests use to see cancellation happen."""
    state = request.app.state.engine.state()
    body = {"ready": state.ready, "running": state.running, "waiting": state.waiting,
            "max_batch": state.max_batch, "max_queue": state.max_queue,
            "cancelled_total": state.cancelled_total, "finished_total": state.finished_total}
    if state.decode_path is not None:
        body["decode_path"] = state.decode_path
    if state.attention_path is not None:
        body["attention_path"] = state.attention_path
    if state.prefill_path is not None:
        body["prefill_path"] = state.prefill_path
    if request.app.state.load_error:
        body["error"] = request.app.state.load_error
    return JSONResponse(body, status_code=200 if state.ready else 503)


@router.get("/metrics")
async def metrics(request: Request):
    """Prometheus exposition of the node's registry."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
