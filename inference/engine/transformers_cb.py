"""In-process engine on torch + transformers, with continuous batching.

Why our own scheduler: transformers' continuous-batching manager (``generate_batch``) shares
one generation config across its batch and targets CUDA paged attention, while the node must
honour each request's own sampling settings and run on the CPU for CI and the demo. The loop
below works with any causal LM that accepts a ``DynamicCache``:

* one engine thread owns the model; requests arrive through a lock-protected list and leave
  through each request's asyncio queue (``call_soon_threadsafe``), so the event loop never
  runs a forward pass;
* between two decode steps, waiting requests are prefilled together in one left-padded
  forward pass (at most ``max_prefill_per_step`` requests and ``max_prefill_tokens`` prompt
  tokens per step, so a burst of arrivals cannot stall running streams) and join the batch;
* the batch's keys and values live in a preallocated buffer written in place
  (:mod:`inference.engine.kv_buffer`), left-padded so that every row ends at the same
  column; a 2-D attention mask hides the padding and explicit ``position_ids`` keep each
  row's own positions, so a joined row computes exactly what it would alone;
* rows that finish or whose client went away leave at once (the last row fills the hole),
  and fully padded leading columns are dropped.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import torch

from inference.engine.base import (
    ContextLengthExceeded, Engine, EngineError, EngineNotReady, EngineOutput, EngineState,
    GenerationRequest, QueueFull, SamplingParams,
)
from inference.engine.detokenizer import StopMatcher, make_detokenizer
from inference.engine.kv_buffer import BatchKVBuffer
from inference.engine.sampling import sample_next_tokens

log = logging.getLogger("seekwatch.engine")


@dataclass(eq=False)
class _Sequence:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    max_new_tokens: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    arrival: float = field(default_factory=time.monotonic)
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False


@dataclass
class StepStats:
    """Where the engine thread's time goes, summed over decode steps and prefills.

    ``forward`` is the host time of the model call: on a GPU, kernels are launched
    asynchronously, so a forward close to the step time means the step is bound by Python
    and kernel launches, not by the device. ``sample`` includes waiting for the device
    (the sampled tokens are copied to the host). Logged every ``LOG_EVERY_S`` while the
    engine is busy (as vLLM logs its throughput), then reset; the benchmark reads these
    lines from the node's log to explain its figures.
    """

    LOG_EVERY_S = 10.0

    steps: int = 0
    rows: int = 0
    forward_s: float = 0.0
    sample_s: float = 0.0
    emit_s: float = 0.0
    prefills: int = 0
    prefill_rows: int = 0
    prefill_s: float = 0.0

    def add_decode(self, rows: int, forward_s: float, sample_s: float, emit_s: float) -> None:
        self.steps += 1
        self.rows += rows
        self.forward_s += forward_s
        self.sample_s += sample_s
        self.emit_s += emit_s

    def add_prefill(self, rows: int, seconds: float) -> None:
        self.prefills += 1
        self.prefill_rows += rows
        self.prefill_s += seconds

    def summary(self) -> str:
        n = max(self.steps, 1)
        return (f"{self.steps} decode steps, {self.rows / n:.1f} rows per step; per step: forward "
                f"{self.forward_s / n * 1e3:.2f} ms (host), sample + device wait {self.sample_s / n * 1e3:.2f} ms, "
                f"emit {self.emit_s / n * 1e3:.2f} ms; {self.prefills} prefills of {self.prefill_rows} rows, "
                f"{self.prefill_s / max(self.prefills, 1) * 1e3:.1f} ms each")


class _Shutdown(EngineError):
    status_code = 503
    error_type = "service_unavailable"
    code = "shutting_down"


def _pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TransformersEngine(Engine):
    """Loads a local model folder with ``from_pretrained`` and serves it with continuous batching."""

    def __init__(self, model_dir: str | os.PathLike, *, device: str | None = None,
                 dtype: str | None = None, max_batch: int = 32, max_queue: int = 128,
                 max_model_len: int | None = None, max_prefill_per_step: int = 16,
                 max_prefill_tokens: int = 8192, kv_cache_tokens: int | None = None,
                 model_version: str | None = None):
        self.model_dir = Path(model_dir)
        self.device = _pick_device(device)
        self.dtype_name = dtype or "auto"
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._max_model_len = max_model_len
        self.max_prefill_per_step = max_prefill_per_step
        self.max_prefill_tokens = max_prefill_tokens
        #: Cap on the batch's padded key/value slots (rows × width). None on the CPU unless
        #: given; on CUDA sized from free memory at load, so admission waits instead of
        #: running the GPU out of memory mid-batch.
        self.kv_cache_tokens = kv_cache_tokens
        self._model_version = model_version or self.model_dir.name
        self.model = None
        self.tokenizer = None
        self._ready = False
        self._lock = threading.Lock()
        self._prefilling = 0
        self._wake = threading.Event()
        self._incoming: list[_Sequence] = []
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._cancelled_total = 0
        self._finished_total = 0
        self.step_stats = StepStats()
        self._stats_since = time.perf_counter()
        # Batch state (engine thread only).
        self._kv: BatchKVBuffer | None = None
        self._positions: torch.Tensor | None = None
        self._last_tokens: torch.Tensor | None = None

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def model_version(self) -> str:
        return self._model_version

    @property
    def max_model_len(self) -> int | None:
        return self._max_model_len

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        self._thread = threading.Thread(target=self._loop, name="seekwatch-engine", daemon=True)
        self._thread.start()
        self._ready = True

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.dtype_name == "auto":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, self.dtype_name)
        t0 = time.monotonic()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype).to(self.device)
        self.model.eval()
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        cfg_len = getattr(self.model.config, "max_position_embeddings", None) or 4096
        self._max_model_len = min(self._max_model_len or cfg_len, cfg_len)
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_token_ids = tuple(eos if isinstance(eos, (list, tuple)) else [eos])
        template = getattr(self.tokenizer, "chat_template", None) or ""
        self.reasoning = "<think>" in str(template)
        self._kv = BatchKVBuffer.for_model(self.model.config, dtype, self.device)
        with torch.inference_mode():  # warm-up: first request should not pay for lazy init
            self.model(input_ids=torch.tensor([[self.eos_token_ids[0]]], device=self.device))
        if self.kv_cache_tokens is None and self.device.type == "cuda":
            self.kv_cache_tokens = self._kv_tokens_that_fit()
        log.info("loaded %s on %s (%s) in %.1fs; KV budget %s tokens", self.model_dir, self.device, dtype,
                 time.monotonic() - t0, self.kv_cache_tokens or "unbounded")

    def _kv_tokens_that_fit(self) -> int:
        """Padded KV tokens that fit in 70 % of the free GPU memory. The batch's buffer is
        written in place, and a reallocation frees each old layer as the new one is filled,
        so the peak is the buffer plus one layer; prefill activations, logits and the
        allocator's fragmentation need the rest."""
        free, _ = torch.cuda.mem_get_info(self.device)
        return max(int(free * 0.7) // self._kv.bytes_per_token(), self._max_model_len)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
        self._ready = False
        if self.step_stats.steps:
            self._log_step_stats(time.perf_counter())

    def state(self) -> EngineState:
        with self._lock:
            waiting = len(self._incoming) + len(self._waiting)
        return EngineState(ready=self._ready, running=len(self._running) + self._prefilling, waiting=waiting,
                           max_batch=self.max_batch, max_queue=self.max_queue,
                           cancelled_total=self._cancelled_total, finished_total=self._finished_total)

    # -- request side (event loop) -----------------------------------------------------
    def encode_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[EngineOutput]:
        if not self._ready or self._stopping:
            raise EngineNotReady("the model is still loading; retry shortly")
        prompt_ids = self.encode_prompt(request.messages)
        limit = self._max_model_len
        if len(prompt_ids) >= limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens, but the messages "
                f"take {len(prompt_ids)} tokens. Shorten the conversation or start a new one.")
        room = limit - len(prompt_ids)
        sp = request.sampling
        max_new = min(sp.max_tokens, room) if sp.max_tokens else room
        seq = _Sequence(request.request_id, prompt_ids, sp, max_new,
                        asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if len(self._incoming) + len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the server is at capacity ({self.max_queue} requests waiting); retry shortly")
            self._incoming.append(seq)
        self._wake.set()
        return self._stream(seq)

    async def _stream(self, seq: _Sequence) -> AsyncIterator[EngineOutput]:
        detok = make_detokenizer(self.tokenizer)
        stops = StopMatcher(seq.sampling.stop)
        n_prompt, n_gen, first = len(seq.prompt_ids), 0, True
        try:
            while True:
                items = [await seq.queue.get()]
                while not seq.queue.empty():  # under load, send what piled up as one chunk
                    items.append(seq.queue.get_nowait())
                errors = [i for i in items if isinstance(i, BaseException)]
                if errors:
                    raise errors[0]
                tokens = [token for token, _, _ in items]
                finish, queue_s = items[-1][1], items[0][2]
                n_gen += len(tokens)
                text = stops.feed(detok.add(tokens))
                if finish is not None:
                    text += stops.feed(detok.flush()) + stops.flush()
                if stops.stopped:
                    finish = "stop"
                out = EngineOutput(text=text, finish_reason=finish, prompt_tokens=n_prompt,
                                   completion_tokens=n_gen, queue_s=queue_s if first else None)
                first = False
                if text or finish is not None or out.queue_s is not None:
                    yield out
                if finish is not None:
                    return
        finally:
            if not seq.done:
                seq.cancelled = True
                self._wake.set()

    # -- engine thread -----------------------------------------------------------------
    def _emit(self, seq: _Sequence, item) -> None:
        try:
            seq.loop.call_soon_threadsafe(seq.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutdown)
            seq.cancelled = True

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._stopping:
                self._wake.clear()
                try:
                    self._drop_cancelled()
                    self._admit()
                    if not self._running:
                        with self._lock:
                            idle = not self._incoming and not self._waiting
                        if idle:
                            self._wake.wait()
                        continue
                    self._decode_step()
                except Exception as exc:  # a failed step fails its batch, not the node
                    log.exception("engine step failed")
                    for seq in list(self._running):
                        seq.done = True
                        self._emit(seq, EngineError(f"generation failed: {exc}"))
                    self._reset_batch()
                    if self.device.type == "cuda":
                        self._kv.release()  # an out-of-memory step: give the next batch all of it
                        torch.cuda.empty_cache()
        for seq in self._running + list(self._waiting) + self._incoming:
            self._emit(seq, _Shutdown("the server is shutting down"))

    def _reset_batch(self) -> None:
        if self._kv is not None:
            self._kv.clear()
        self._running = []
        self._positions = self._last_tokens = None

    def _admit(self) -> None:
        with self._lock:
            self._waiting.extend(self._incoming)
            self._incoming.clear()
        group: list[_Sequence] = []
        tokens = 0
        while (self._waiting and len(self._running) + len(group) < self.max_batch
               and len(group) < self.max_prefill_per_step):
            seq = self._waiting[0]
            if seq.cancelled:
                self._waiting.popleft()
                self._cancelled_total += 1
                continue
            if group and tokens + len(seq.prompt_ids) > self.max_prefill_tokens:
                break  # the rest waits a step: running streams keep decoding
            if not self._fits(len(group) + 1, max([len(seq.prompt_ids)] + [len(s.prompt_ids) for s in group])):
                break  # KV budget: wait for running rows to finish
            group.append(self._waiting.popleft())
            tokens += len(seq.prompt_ids)
        if group:
            t0 = time.perf_counter()
            self._prefilling = len(group)  # neither waiting nor in the batch yet, but running
            try:
                self._prefill(group)
            finally:
                self._prefilling = 0
            self.step_stats.add_prefill(len(group), time.perf_counter() - t0)

    def _fits(self, new_rows: int, new_width: int) -> bool:
        """Would the batch, with ``new_rows`` more rows, stay within the KV budget while the
        widest row grows by a further 256 tokens?"""
        if self.kv_cache_tokens is None:
            return True
        width = max(new_width, self._kv.width if self._running else 0) + 256
        if not self._running and new_rows == 1:
            return True  # one request alone always runs (the context limit bounds it)
        return (len(self._running) + new_rows) * width <= self.kv_cache_tokens

    def _prefill(self, group: list[_Sequence]) -> None:
        """Prefill the admitted sequences in one forward pass, left-padded to the longest,
        sample each one's first token, and join them to the running batch."""
        from transformers import DynamicCache

        now = time.monotonic()
        width = max(len(s.prompt_ids) for s in group)
        pad_id = self.eos_token_ids[0]
        ids = torch.tensor([[pad_id] * (width - len(s.prompt_ids)) + s.prompt_ids for s in group], device=self.device)
        mask = torch.tensor([[0] * (width - len(s.prompt_ids)) + [1] * len(s.prompt_ids) for s in group],
                            dtype=torch.long, device=self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self._cache_kw: cache}, **self._keep_kw)
        tokens = sample_next_tokens(out.logits[:, -1, :], [s.sampling for s in group], [[] for _ in group],
                                    self.eos_token_ids)
        self._kv.add_rows([(layer.keys, layer.values) for layer in cache.layers], mask)
        del cache, out
        lengths = torch.tensor([len(s.prompt_ids) for s in group], device=self.device)
        self._join_batch(group, lengths, tokens.to(self.device))
        first_row = len(self._running) - len(group)
        done = []
        for i, (seq, token) in enumerate(zip(group, tokens.tolist())):
            self._after_token(seq, token, now - seq.arrival)
            if seq.done:
                done.append(first_row + i)
        if done:
            self._remove_rows(done)

    def _join_batch(self, group: list[_Sequence], lengths: torch.Tensor, tokens: torch.Tensor) -> None:
        """Append the group's rows (already in the KV buffer) to the batch's per-row state."""
        if not self._running:
            self._positions, self._last_tokens = lengths, tokens
        else:
            self._positions = torch.cat([self._positions, lengths])
            self._last_tokens = torch.cat([self._last_tokens, tokens])
        self._running.extend(group)

    def _after_token(self, seq: _Sequence, token: int, queue_s: float | None = None) -> None:
        seq.generated.append(token)
        sp = seq.sampling
        finish = None
        if token in self.eos_token_ids and not sp.ignore_eos and len(seq.generated) > sp.min_tokens:
            finish = "stop"
        elif len(seq.generated) >= seq.max_new_tokens:
            finish = "length"
        if finish is not None:
            seq.done = True
            self._finished_total += 1
        self._emit(seq, (token, finish, queue_s))

    def _decode_step(self) -> None:
        t0 = time.perf_counter()
        batch = len(self._running)
        mask = self._kv.begin_decode()
        out = self.model(input_ids=self._last_tokens.view(batch, 1),
                         position_ids=self._positions.view(batch, 1), attention_mask=mask,
                         use_cache=True, **{self._cache_kw: self._kv.cache()}, **self._keep_kw)
        self._kv.end_decode()
        self._positions = self._positions + 1
        t1 = time.perf_counter()
        tokens = sample_next_tokens(out.logits[:, -1, :], [s.sampling for s in self._running],
                                    [s.generated for s in self._running], self.eos_token_ids)
        self._last_tokens = tokens.to(self.device)
        t2 = time.perf_counter()
        finished = []
        for i, (seq, token) in enumerate(zip(self._running, tokens.tolist())):
            self._after_token(seq, token)
            if seq.done:
                finished.append(i)
        if finished:
            self._remove_rows(finished)
        now = time.perf_counter()
        self.step_stats.add_decode(batch, t1 - t0, t2 - t1, now - t2)
        if now - self._stats_since >= StepStats.LOG_EVERY_S:
            self._log_step_stats(now)

    def _log_step_stats(self, now: float) -> None:
        """Log the interval's account (``serve_bench`` reads these lines) and start a new one."""
        log.info("engine: last %.0f s: %s", now - self._stats_since, self.step_stats.summary())
        self.step_stats, self._stats_since = StepStats(), now

    def _drop_cancelled(self) -> None:
        gone = [i for i, s in enumerate(self._running) if s.cancelled and not s.done]
        if gone:
            self._cancelled_total += len(gone)
            for i in gone:
                self._running[i].done = True
            self._remove_rows(gone)

    def _remove_rows(self, rows: list[int]) -> None:
        order = self._kv.remove_rows(rows)  # new row j was row order[j]
        if not order:
            self._reset_batch()
            return
        idx = torch.tensor(order, device=self.device)
        self._running = [self._running[i] for i in order]
        self._positions = self._positions.index_select(0, idx)
        self._last_tokens = self._last_tokens.index_select(0, idx)


# --------------------------------------------------------------------------- plug-in
# (kept at the end of the module: the engine above, its registration here)
from inference.engine.registry import EnginePlugin, register  # noqa: E402


@dataclass(frozen=True)
class TransformersOptions:
    """``serve --engine transformers`` options."""

    model: str                        # local model folder (from_pretrained)
    device: str = "auto"
    dtype: str = "auto"
    max_model_len: int | None = None
    kv_cache_tokens: int | None = None  # padded KV slots; default: from free GPU memory


def _add_arguments(g) -> None:
    g.add_argument("--model", metavar="DIR", help="local model folder (from_pretrained); required")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16, float32")
    g.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    g.add_argument("--kv-cache-tokens", type=int, metavar="N",
                   help="cap on the batch's padded key/value slots (rows x width); default: 70%% of free GPU memory, unbounded on CPU")


def _options_from_args(args) -> TransformersOptions:
    from contracts.config import ConfigError

    if not args.model:
        raise ConfigError("--model DIR is required with --engine transformers")
    if not os.path.isdir(args.model):
        raise ConfigError(f"--model {args.model}: no such folder (make one with: seekwatch make-tiny-model DIR)")
    if not os.path.exists(os.path.join(args.model, "config.json")):
        raise ConfigError(f"--model {args.model}: no config.json in the folder; is it a transformers model?")
    if args.kv_cache_tokens is not None and args.kv_cache_tokens < 1:
        raise ConfigError("--kv-cache-tokens must be at least 1")
    return TransformersOptions(model=args.model, device=args.device, dtype=args.dtype,
                               max_model_len=args.max_model_len, kv_cache_tokens=args.kv_cache_tokens)


def _build(options: TransformersOptions, config) -> TransformersEngine:
    return TransformersEngine(options.model, device=options.device, dtype=options.dtype,
                              max_batch=config.max_batch, max_queue=config.max_queue,
                              max_model_len=options.max_model_len, kv_cache_tokens=options.kv_cache_tokens,
                              model_version=config.model_version)


register(EnginePlugin(
    name="transformers", help="run a local model in-process with continuous batching",
    add_arguments=_add_arguments, options_from_args=_options_from_args, build=_build,
    model_names=lambda o: [Path(o.model).name]))
