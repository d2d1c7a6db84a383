"""Builds the node's ASGI app: engine, chat service, observer, middleware and routes.

The engine loads in the background after start-up, so ``/healthz`` answers at once and
``/readyz`` (and every chat request) says 503 until the model is ready.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference import openapi
from inference.auth import ApiKeys
from inference.billing_router import SpendLedger
from inference.billing_router import router as billing_router
from inference.feedback_router import RecentIds
from inference.feedback_router import router as feedback_router
from inference.chat.api_router import router as chat_router
from inference.chat.serving import ChatService
from inference.config import NodeConfig
from inference.engine.base import Engine, EngineError
from inference.heap import freeze_after_startup
from inference.http_errors import InvalidRequest, engine_error_response, error_response
from inference.limits import BodySizeLimit, BodyTooLarge
from inference.system_router import models_router
from inference.system_router import router as system_router
from inference.turns import NullObserver, TurnObserver

log = logging.getLogger("seekwatch.node")

#: Paths whose body is a chat request (a refused one is recorded with its kind).
CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions", "/chat"})
#: The most of a refused request's body the node reads to tell its kind; a larger one is "other".
UNAUTHORIZED_BODY_BYTES = 256 * 1024


def engine_in_own_process(config: NodeConfig) -> bool:
    """``config.engine_process``, or where that is None, what the engine's plug-in prefers."""
    from inference.engine import registry

    if config.engine_process is not None:
        return config.engine_process
    return config.engine_options is not None and registry.get(config.engine).own_process(config.engine_options)


def build_engine(config: NodeConfig) -> Engine:
    """The engine the config names, built by its plug-in (``inference/engine/registry.py``),
    in the node's process or in one of its own (:func:`engine_in_own_process`)."""
    from inference.engine import registry

    if engine_in_own_process(config):
        from inference.engine.process import EngineProcess

        return EngineProcess(config.engine, config.engine_options, config)
    log.info("engine %s runs in the node's process", config.engine)
    return registry.get(config.engine).build(config.engine_options, config)


def build_observer(config: NodeConfig, registry, engine: Engine, cost,
                   in_flight: "RequestsInFlight | None" = None) -> TurnObserver:
    if not config.instrumentation:
        return NullObserver()
    from inference.instrumentation import NodeInstrumentation

    return NodeInstrumentation.from_config(config, registry, engine, cost,
                                           requests_in_flight=(lambda: in_flight.n) if in_flight else None)


def create_app(config: NodeConfig, engine: Engine | None = None) -> FastAPI:
    from prometheus_client import CollectorRegistry

    from contracts.cost import CostModel

    # the node's own files first: a broken one is a one-line error before any engine work
    cost = CostModel.load(config.cost_config)
    keys = ApiKeys.load(config.api_key_file, config.api_keys_env)
    engine = engine or build_engine(config)
    registry = CollectorRegistry()
    in_flight = RequestsInFlight()
    observer = build_observer(config, registry, engine, cost, in_flight)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async def load():
            try:
                await engine.start()
                log.info("engine ready: %s", engine.model_version)
                freeze_after_startup("node")
            except Exception as exc:  # reported on /readyz and in the log, node stays up
                app.state.load_error = f"{exc.__class__.__name__}: {exc}"
                log.exception("engine failed to start")

        async def watch_keys():
            while True:  # key rotation without a restart: poll the file, and reload on SIGHUP
                await asyncio.sleep(2)
                keys.reload_if_changed()

        task = asyncio.create_task(load())
        watcher = asyncio.create_task(watch_keys()) if keys.key_file else None
        try:
            import signal

            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, keys.reload)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP
            pass
        try:
            yield
        finally:
            task.cancel()
            if watcher:
                watcher.cancel()
            await engine.stop()
            close = getattr(observer, "close", None)
            if close:
                close()

    async def require_key(request: Request) -> None:
        if not keys.check(request.headers.get("authorization")):
            message = "Incorrect API key provided. Send it as 'Authorization: Bearer <key>'."
            await _record_unauthorized(request, 401, message)
            raise HTTPException(401, message)

    async def _record_unauthorized(request: Request, status: int, message: str) -> None:
        """Record a 401/403 like any other rejection (a record without text, a metric)."""
        body = None
        if request.method == "POST" and request.url.path in CHAT_PATHS:
            try:  # at most UNAUTHORIZED_BODY_BYTES: an unknown caller gets no more parsing than that
                chunks, size = [], 0
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > UNAUTHORIZED_BODY_BYTES:
                        chunks = None
                        break
                    chunks.append(chunk)
                body = b"".join(chunks) if chunks is not None else None
            except Exception:  # too large, or the client went away: recorded as "other"
                body = None
        observer.on_unauthorized(app.state.chat.unauthorized(
            request.url.path, request.headers, body, getattr(request.state, "arrival", None), status, message))

    app = FastAPI(title="seekwatch node", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible DeepSeek chat node with Prometheus metrics and masked session logs.")
    app.state.engine = engine
    app.state.registry = registry
    app.state.observer = observer
    app.state.cost = cost
    app.state.feedback_seen = RecentIds(100_000)
    app.state.config = config
    app.state.spend_ledger = SpendLedger(config.log_dir)
    app.state.load_error = None
    app.state.started_at = int(time.time())
    app.state.chat = ChatService(engine, config.model_names(), observer,
                                 default_temperature=config.default_temperature,
                                 default_max_tokens=config.default_max_tokens)

    protected = [Depends(require_key)]
    app.include_router(chat_router, dependencies=protected)
    app.include_router(feedback_router, dependencies=protected)
    app.include_router(billing_router, dependencies=protected)
    # the model list needs the key as on OpenAI and vLLM; the probes and /metrics only with
    # --auth-probes (Kubernetes probes and Prometheus scrape them)
    app.include_router(models_router, dependencies=protected)
    app.include_router(system_router, dependencies=protected if config.auth_probes else [])

    @app.exception_handler(InvalidRequest)
    async def _invalid(request: Request, exc: InvalidRequest):
        observer.on_invalid_request(exc.status_code)
        return error_response(exc.status_code, str(exc), code=exc.code, param=exc.param)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge):
        observer.on_invalid_request(413)
        return error_response(413, str(exc), code="request_too_large", headers={"Connection": "close"})

    @app.exception_handler(EngineError)
    async def _engine(request: Request, exc: EngineError):
        return engine_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 401:
            return error_response(401, str(exc.detail), "invalid_request_error", "invalid_api_key")
        if exc.status_code == 403:  # recorded here; a 401 was recorded where the key was checked
            await _record_unauthorized(request, 403, str(exc.detail))
            return error_response(403, str(exc.detail), "permission_error", "forbidden")
        if exc.status_code == 404:
            return error_response(404, f"No route {request.method} {request.url.path}.", code="not_found")
        if exc.status_code == 405:
            return error_response(405, f"Method {request.method} is not allowed on {request.url.path}.",
                                  code="method_not_allowed")
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, "The server hit an internal error; it has been logged.", "server_error")

    app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_credentials=False,
                       allow_methods=["GET", "POST", "OPTIONS"],
                       # "*" echoes the requested headers back, Authorization included (a literal
                       # "*" would not cover Authorization in browsers).
                       allow_headers=["*"],
                       expose_headers=["X-Request-Id", "X-Session-Id", "Retry-After"], max_age=600)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(StampArrival, in_flight=in_flight)
    openapi.install(app)
    return app


class RequestsInFlight:
    """HTTP requests the node is serving right now, on any endpoint, from arrival to the last
    byte sent (event loop only, so no lock). The instrumentation writes its log at once only
    when this is zero: a request still being read or tokenised has not reached the engine's
    queue yet, but a wake-up would delay it all the same."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class StampArrival:
    """Outermost middleware: notes when a request arrived, so latency and TTFT count the
    time spent reading and parsing the body too, as the client sees it; and counts the
    requests in flight."""

    def __init__(self, app, in_flight: RequestsInFlight):
        self.app = app
        self.in_flight = in_flight

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["arrival"] = (time.monotonic(), time.time())
        self.in_flight.n += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight.n -= 1
