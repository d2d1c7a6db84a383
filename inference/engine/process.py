"""Any engine in a process of its own (``serve --engine-process``).

Why: the in-process engine runs its scheduling loop on a thread of the node's process, so
the loop and the HTTP side (the event loop that parses requests, formats one SSE chunk per
stream per step and feeds the instrumentation) share one GIL. On an H200 the engine's own
host time per decode step was 2.1 ms when driven directly and 6-7 ms inside the node at 64
to 256 streams, waiting for the GIL, and the node made 0.83-0.90 of the tokens the engine
made alone. vLLM's v1 engine core runs in its own process for the same reason.

Here the node keeps the HTTP side and an :class:`EngineProcess` that speaks the
:class:`~inference.engine.base.Engine` interface; the engine the config names is built and
run by its plug-in in a child process (``spawn``: CUDA cannot be forked). They talk over two
pipes (``multiprocessing.connection``, pickled messages):

* node -> engine: ``("generate", key, GenerationRequest)``, ``("cancel", key)``, ``("stop",)``;
* engine -> node: ``("ready", model_version, max_model_len, EngineState)`` or
  ``("failed", text)`` once, ``("state", EngineState)`` every :data:`STATE_INTERVAL_S`, and
  ``("items", [(key, kind, payload), ...])``: every stream's news of one turn of the
  child's event loop in one message (at a decode step, one message for all its rows).
  ``kind`` is ``admitted``, ``refused`` (an :class:`EngineError` before any output),
  ``out`` (an :class:`EngineOutput`), ``end`` or ``error`` (an error mid-stream).

Errors cross as (class name, message, attributes) and are rebuilt as the class of that name
in :mod:`inference.engine.base` (else :class:`EngineError`), with their HTTP status, type,
code and ``retry_after_s`` kept. If the child dies, every open stream ends with a 503
(:class:`EngineProcessExited`), ``/readyz`` turns unready, and the node stays up to say so.
``state()`` is the child's last report, at most :data:`STATE_INTERVAL_S` old.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import sys
import threading
import time
from contextlib import aclosing
from dataclasses import replace
from typing import Any, AsyncIterator

from inference.engine import base
from inference.engine.base import (
    Engine, EngineError, EngineNotReady, EngineOutput, EngineState, GenerationRequest, OutputStream,
)
from inference.heap import freeze_after_startup

log = logging.getLogger("seekwatch.engine.process")

#: how often the engine process reports its state (queue depth, readiness) to the node
STATE_INTERVAL_S = 0.1
#: how long ``stop`` waits for the engine process to finish before killing it
STOP_TIMEOUT_S = 30.0
#: how often the engine process logs its own account (``engine process: last 10 s: ...``)
ACCOUNT_INTERVAL_S = 10.0


class EngineProcessExited(EngineError):
    """The engine's process is gone: nothing can be generated until the node restarts."""

    status_code = 503
    error_type = "service_unavailable"
    code = "engine_unavailable"


def _pack_error(exc: BaseException) -> tuple[str, str, dict]:
    if not isinstance(exc, EngineError):
        return "EngineError", f"{exc.__class__.__name__}: {exc}", {}
    attrs = {k: getattr(exc, k) for k in ("status_code", "error_type", "code", "prompt_tokens", "retry_after_s")
             if hasattr(exc, k)}
    return type(exc).__name__, str(exc), attrs


def _unpack_error(packed: tuple[str, str, dict]) -> EngineError:
    name, message, attrs = packed
    cls = getattr(base, name, None)
    if not (isinstance(cls, type) and issubclass(cls, EngineError)):
        cls = EngineError
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    for key, value in attrs.items():
        setattr(exc, key, value)
    return exc


class EngineProcess(Engine):
    """The engine plug-in ``name`` (with its ``options`` and the node's ``config``), run in a
    child process behind the ordinary engine interface."""

    def __init__(self, name: str, options: Any, config: Any, log_level: int | None = None):
        self.name, self.options, self.config = name, options, config
        self.log_level = logging.getLogger().level if log_level is None else log_level
        self._state = EngineState(ready=False, running=0, waiting=0, max_batch=config.max_batch,
                                  max_queue=config.max_queue)
        self._model_version = config.model_version or name
        self._max_model_len: int | None = None
        self._process = None
        self._send_conn = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future | None = None
        self._streams: dict[int, asyncio.Queue] = {}
        self._keys = itertools.count()
        self._exited: str | None = None
        self._reaped = threading.Event()  # set once the child has exited and been waited for
        self._stopping = False
        self._served = False  # the engine reported ready once

    @property
    def model_version(self) -> str:
        return self._model_version

    @property
    def max_model_len(self) -> int | None:
        return self._max_model_len

    async def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        from_child, child_out = ctx.Pipe(duplex=False)
        child_in, to_child = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=_child_main, name=f"seekwatch-engine-{self.name}", daemon=True,
                                    args=(child_in, child_out, self.name, self.options, self.config, self.log_level))
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        self._process.start()
        child_in.close()
        child_out.close()
        self._send_conn = to_child
        threading.Thread(target=self._read, args=(from_child,), name="seekwatch-engine-pipe", daemon=True).start()
        log.info("engine %s starting in process %d", self.name, self._process.pid)
        await self._ready

    # -- the pipe from the child (a thread of its own; everything else on the event loop) --
    def _read(self, conn) -> None:
        try:
            while True:
                msg = conn.recv()
                self._loop.call_soon_threadsafe(self._dispatch, msg)
        except (EOFError, OSError):
            pass
        finally:
            conn.close()
        self._process.join()  # the one place the child is waited for (two waiters race for its status)
        self._reaped.set()
        try:
            self._loop.call_soon_threadsafe(self._gone, self._process.exitcode)
        except RuntimeError:  # the node's event loop has already closed: nobody left to tell
            pass

    def _dispatch(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "items":
            for key, what, payload in msg[1]:
                queue = self._streams.get(key)
                if queue is not None:
                    queue.put_nowait((what, payload))
        elif kind == "state":
            self._state = msg[1]
        elif kind == "ready":
            _, self._model_version, self._max_model_len, self._state = msg
            self._served = True
            if not self._ready.done():
                self._ready.set_result(None)
        elif kind == "failed" and not self._ready.done():
            self._ready.set_exception(RuntimeError(msg[1]))

    def _gone(self, exitcode: int | None) -> None:
        """The child's end of the pipe closed: it exited (or was killed)."""
        self._exited = f"the engine process exited (exit code {exitcode})"
        unexpected = self._served and not self._stopping  # not a failed start-up, not a stop
        self._state = replace(self._state, ready=False, running=0, waiting=0,
                              failed=self._exited if unexpected else None)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(RuntimeError(f"{self._exited} while starting"))
        packed = _pack_error(EngineProcessExited(self._exited))
        for queue in self._streams.values():
            queue.put_nowait(("error", packed))
        if unexpected:
            log.error("%s; the node cannot generate until it is restarted (/healthz now fails)", self._exited)

    def _send(self, msg: tuple) -> None:
        try:
            self._send_conn.send(msg)
        except (OSError, ValueError):  # the child is gone; _gone reports it
            pass

    # -- the engine interface ---------------------------------------------------------
    def state(self) -> EngineState:
        return self._state

    async def generate(self, request: GenerationRequest) -> AsyncIterator[EngineOutput]:
        if self._exited or self._send_conn is None or not self._state.ready:
            raise EngineNotReady(self._exited or "the engine process is not ready")
        key = next(self._keys)
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[key] = queue
        self._send(("generate", key, request))
        try:
            what, payload = await queue.get()
        except BaseException:  # cancelled while waiting for admission
            self._streams.pop(key, None)
            self._send(("cancel", key))
            raise
        if what != "admitted":
            self._streams.pop(key, None)
            raise _unpack_error(payload)
        return OutputStream(self._stream(key, queue), lambda: self._abandon(key))

    async def _abandon(self, key: int) -> None:
        """The client went away: the child frees the batch slot (unless the stream ended)."""
        if self._streams.pop(key, None) is not None:
            self._send(("cancel", key))

    async def _stream(self, key: int, queue: asyncio.Queue) -> AsyncIterator[EngineOutput]:
        ended = False
        try:
            while True:
                what, payload = await queue.get()
                if what == "out":
                    yield payload
                elif what == "end":
                    ended = True
                    return
                else:  # "error": mid-stream, or the process died
                    ended = True
                    raise _unpack_error(payload)
        finally:
            if ended:
                self._streams.pop(key, None)
            else:
                await self._abandon(key)

    async def stop(self) -> None:
        if self._process is None:
            return
        self._stopping = True
        self._send(("stop",))
        if not await asyncio.to_thread(self._reaped.wait, STOP_TIMEOUT_S):
            log.warning("the engine process did not stop within %.0fs; killing it", STOP_TIMEOUT_S)
            self._process.kill()
            await asyncio.to_thread(self._reaped.wait, 5)
        self._state = replace(self._state, ready=False)


# ---------------------------------------------------------------------------- the child
def _child_main(recv_conn, send_conn, name: str, options: Any, config: Any, log_level: int) -> None:
    import signal

    # Ctrl-C and a supervisor's SIGTERM reach the whole process group; the node stops the
    # engine itself (after its open streams), and the engine stops when the node's end of
    # the pipe closes, however the node ended.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # No progress bars (transformers' "Loading weights"): carriage returns in a server's log,
    # and tqdm's lock is a named semaphore that outlives the quick exit below, which
    # multiprocessing's resource tracker reported as leaked at every stop.
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:  # imported already, to unpickle the engine's options
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    code = 0
    try:
        asyncio.run(_ChildServer(recv_conn, send_conn).run(name, options, config))
    except BaseException:
        logging.getLogger("seekwatch.engine").exception("the engine process failed")
        code = 1
    finally:
        send_conn.close()
    # The engine has stopped and the pipe is closed; what is left the OS frees. Ending here,
    # without the interpreter's finalisation, spares the node's log the leak report of
    # Triton's bindings (nanobind: hundreds of "leaked type/function" lines on every stop,
    # from objects that live until exit by design).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _ChildServer:
    """The engine's side: builds and starts the engine, runs each request as a task, and
    sends what the tasks produce once per turn of its event loop."""

    def __init__(self, recv_conn, send_conn):
        self.recv_conn, self.send_conn = recv_conn, send_conn
        self.pending: list[tuple[int, str, Any]] = []
        self.tasks: dict[int, asyncio.Task] = {}
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.engine: Engine | None = None
        self.admitted = self.messages = self.items = 0  # since the last account
        self.admit_s = 0.0

    async def run(self, name: str, options: Any, config: Any) -> None:
        from inference.engine import registry

        loop = asyncio.get_running_loop()
        try:
            self.engine = registry.get(name).build(options, config)
            await self.engine.start()
        except BaseException as exc:
            logging.getLogger("seekwatch.engine").exception("the engine failed to start")
            self.send_conn.send(("failed", f"{exc.__class__.__name__}: {exc}"))
            return
        engine = self.engine
        freeze_after_startup("engine process")
        self.send_conn.send(("ready", engine.model_version, engine.max_model_len, engine.state()))
        threading.Thread(target=self._read, args=(loop,), name="seekwatch-engine-inbox", daemon=True).start()
        reporter = asyncio.create_task(self._report_state())
        try:
            while True:
                msg = await self.inbox.get()
                if msg[0] == "generate":
                    _, key, request = msg
                    self.tasks[key] = asyncio.create_task(self._serve(key, request))
                elif msg[0] == "cancel":
                    task = self.tasks.pop(msg[1], None)
                    if task is not None:
                        task.cancel()
                else:  # "stop", or the node's end of the pipe closed
                    break
        finally:
            reporter.cancel()
            for task in list(self.tasks.values()):
                task.cancel()
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            await engine.stop()

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while True:
                loop.call_soon_threadsafe(self.inbox.put_nowait, self.recv_conn.recv())
        except (EOFError, OSError):  # the node exited: stop too
            loop.call_soon_threadsafe(self.inbox.put_nowait, ("stop",))

    def _put(self, key: int, what: str, payload: Any = None) -> None:
        if not self.pending:  # one send per loop turn, after every stream woken in it has run
            asyncio.get_running_loop().call_soon(self._flush)
        self.pending.append((key, what, payload))

    def _flush(self) -> None:
        items, self.pending = self.pending, []
        self.send_conn.send(("items", items))
        self.messages += 1
        self.items += len(items)

    async def _serve(self, key: int, request: GenerationRequest) -> None:
        try:
            t0 = time.monotonic()
            try:
                outputs = await self.engine.generate(request)
            except Exception as exc:
                self._put(key, "refused", _pack_error(exc))
                return
            self.admit_s += time.monotonic() - t0
            self.admitted += 1
            self._put(key, "admitted")
            async with aclosing(outputs):  # closing the stream early frees its batch slot
                try:
                    async for out in outputs:
                        self._put(key, "out", out)
                    self._put(key, "end")
                except Exception as exc:  # (a cancellation is no Exception: it propagates)
                    self._put(key, "error", _pack_error(exc))
        finally:
            self.tasks.pop(key, None)

    async def _report_state(self) -> None:
        """Send the engine's state every :data:`STATE_INTERVAL_S`, and log the child's own
        account every :data:`ACCOUNT_INTERVAL_S`: how late its event loop ran (it shares a GIL
        with the engine's thread, and admits, tokenises and relays on it), how long admission
        took, and how many messages crossed."""
        began = time.monotonic()
        ticks, lag_sum, lag_max = 0, 0.0, 0.0
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(STATE_INTERVAL_S)
            lag = time.monotonic() - t0 - STATE_INTERVAL_S
            ticks, lag_sum, lag_max = ticks + 1, lag_sum + lag, max(lag_max, lag)
            self.send_conn.send(("state", self.engine.state()))
            now = time.monotonic()
            if now - began < ACCOUNT_INTERVAL_S:
                continue
            if self.admitted or self.messages:  # an idle window is not logged
                log.info("engine process: last %.0f s: event loop late by %.1f ms mean, %.1f ms at most; "
                         "%d requests admitted in %.2f ms each; %d messages out, %.1f items each",
                         now - began, 1e3 * lag_sum / ticks, 1e3 * lag_max, self.admitted,
                         1e3 * self.admit_s / max(self.admitted, 1), self.messages, self.items / max(self.messages, 1))
            began, ticks, lag_sum, lag_max = now, 0, 0.0, 0.0
            self.admitted = self.messages = self.items = 0
            self.admit_s = 0.0
