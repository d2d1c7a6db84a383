"""In-process engine on torch + transformers, with continuous batching.

Why our own scheduler: transformers' continuous-batching manager (``generate_batch``) shares
one generation config across its batch, while the node must honour each request's own
sampling settings and run on the CPU for CI and the demo. The loop below:

* one engine thread owns the model; requests arrive through a lock-protected list and leave
  through each request's asyncio queue (``call_soon_threadsafe``), so the event loop never
  runs a forward pass;
* keys and values live in a :class:`~inference.engine.slot_cache.SlotKVCache` allocated once
  at start-up: one slot of ``max_model_len`` tokens per sequence, sized from free memory on
  CUDA (the log says how many tokens and slots); a request waits in the queue until a slot
  is free, so a burst beyond the pool queues instead of running out of memory;
* **chunked prefill** (Sarathi-style): each engine step spends at most ``max_prefill_tokens``
  prompt tokens on prefill, taken from the waiting prompts in arrival order (a long prompt
  is split over several steps), and then runs one decode step for every running sequence, so
  arrivals never freeze the streams already running;
* **attention that reads only live tokens** (:mod:`inference.engine.slot_attention`): on
  CUDA, FlashAttention's variable-length kernel reads each sequence's own columns of the
  store in place, for prefill always and for a decode step when the start-up timings say
  it costs less than one masked SDPA call over the padded width; for decode, the paged
  kernels this PyTorch build has (FlashAttention's split-KV path, cuDNN's) read the same
  store through a fixed page table, a Triton kernel written for one query per sequence
  reads it too, and each batch bucket keeps the fastest kernel timed at start-up; with
  ``kv_cache_dtype="fp8"`` the store keeps 8-bit keys and values, which only Triton kernels
  read (:mod:`inference.engine.triton_prefill` for prefill, the decode kernel for decode);
* **CUDA graphs**: on CUDA the decode step is captured once per batch-size bucket (1, 2, 4,
  … up to the slot count) and attention (masked at each width bucket, and variable-length),
  and a prefill step once per token bucket, and replayed: one launch instead of several
  hundred kernels issued from Python. Rows and tokens that only pad a step to its bucket
  write into a trash column. Where graphs cannot apply (the CPU, a capture that fails, a
  replay that disagrees with the eager step at start-up), the same code runs eagerly;
  ``/readyz`` (``decode_path``, ``prefill_path``, ``attention_path``) and the start-up log
  say which path is live;
* **overlapped decode steps**: a step is launched before the previous step's tokens are
  read on the host (its inputs are taken on the device), and nothing in a step waits for
  the device, so the GPU runs one step while the host hands out the last;
* sampling runs on the device over the whole batch.
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from inference.engine.base import (
    ContextLengthExceeded, Engine, EngineError, EngineNotReady, EngineOutput, EngineState,
    GenerationRequest, OutputStream, QueueFull, SamplingParams,
)
from inference.engine.detokenizer import StopMatcher, make_detokenizer
from inference.engine.device_clock import DeviceClock
from inference.engine.fused_linear import count_silu_kernels
from inference.engine.fused_linear import fuse_projections as fuse_linear_projections
from inference.engine import fused_norm
from inference.engine.fused_residual import fuse_residuals as fuse_residual_adds
from inference.engine.host_copy import upload
from inference.engine import slot_attention
from inference.engine.sampling import sample_next_tokens
from inference.engine.slot_cache import STORE_DTYPES, SlotCache, SlotKVCache, bytes_per_token, kv_geometry

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
    slot: int = -1          # row of the KV store this sequence holds
    length: int = 0         # tokens whose keys/values are in the slot
    started: float | None = None  # when its first prompt chunk was scheduled
    pending: int = 0        # tokens chosen by a launched decode step, not yet taken on the host


@dataclass(eq=False)
class _Step:
    """A launched decode step (or a prefill step's first tokens): its rows (in launch order),
    the chosen tokens on the device and their copy on the host (filled when ``event``
    completes)."""

    seqs: list[_Sequence]
    tokens: torch.Tensor
    host: torch.Tensor
    event: "torch.cuda.Event | None"

    @classmethod
    def copy_out(cls, seqs: list[_Sequence], tokens: torch.Tensor, host: torch.Tensor,
                 event: "torch.cuda.Event | None") -> "_Step":
        """Queue the copy of ``tokens`` into ``host`` (pinned on CUDA, so nothing waits) and
        mark its end with ``event``."""
        host.copy_(tokens, non_blocking=True)
        if event is not None:
            event.record()
        return cls(seqs, tokens, host, event)

    def read(self) -> list[int]:
        """The chosen tokens on the host, waiting for the device if the copy is not done."""
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


@dataclass
class _Prefill:
    """A launched prefill step: the first tokens of the prompts it completed (None if it
    completed none), its prompt tokens and the host time its launch took."""

    first: _Step | None
    tokens: int
    launch_s: float


def _deliver(items: list[tuple[asyncio.Queue, tuple]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


def buckets(limit: int, first: int = 1) -> list[int]:
    """``first, 2·first, 4·first, … `` below ``limit``, then ``limit`` itself: the widths
    a masked decode step is captured for, and the batch sizes up to 128 rows
    (:func:`batch_sizes`). Powers of two keep the graphs few (per batch size one per width
    and a variable-length one, and its attention timed at start-up)."""
    out, b = [], first
    while b < limit:
        out.append(b)
        b *= 2
    out.append(limit)
    return out


def batch_sizes(limit: int) -> list[int]:
    """The decode step's batch buckets: powers of two up to 128 rows, then every 32 up to
    ``limit``. Above 128 rows a step's matrix multiplies are bound by arithmetic, so padding
    costs in proportion: a step of 140 rows padded to 256 runs its matrix multiplies for
    256 rows, about 2 ms more than for 160 at the H200's measured rates (5.0 ms at 256 rows,
    2.9 ms to read a 7B model's weights once). Below, reading the weights bounds them and
    padding is nearly free. vLLM captures every 8 rows; every 32 keeps the graphs (four per
    batch size) and the start-up timings fewer."""
    if limit <= 128:
        return buckets(limit)
    return [*buckets(128), *range(160, limit, 32), limit]


def prefill_sizes(top: int) -> list[int]:
    """The prefill step's token buckets: every 32 tokens up to ``top`` (the step budget,
    rounded up to the store's token step). A prefill step is bound by arithmetic, so its
    padding costs in proportion: buckets every 128-256 padded the H200's steps of ~1,300
    tokens by ~7 %; every 64 pads a step by 32 tokens on average, a few per cent of the
    steps of a few hundred tokens that single arriving prompts make. More buckets cost
    capture time at start-up (64 graphs for a 2,048-token budget); they run one at a time
    and share one memory pool."""
    return sorted({*range(32, top, 32), top})


def bucket_for(n: int, sizes: list[int]) -> int:
    """The smallest bucket that holds ``n``."""
    for b in sizes:
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {sizes[-1]}")


@dataclass
class StepStats:
    """Where the engine thread's time goes, summed over decode steps and prefill chunks.

    ``forward`` is the host time of the model call (a graph replay on the fast path): on a
    GPU, kernels are launched asynchronously, so a forward close to the step time means the
    step is bound by Python and kernel launches, not by the device. ``sample`` is the host
    time launching the sampling and the copy of its tokens; ``emit`` takes in a launched
    step's tokens (the previous step's; this one's with ``overlap=False``), so it holds the
    wait for the device. A ``sample`` that grows with the step time means something in the
    sampling waits for the device. Logged every
    ``LOG_EVERY_S`` while the engine is busy (as vLLM logs its throughput), then reset; the
    benchmark reads these lines from the node's log to explain its figures.
    """

    LOG_EVERY_S = 10.0

    steps: int = 0
    varlen_steps: int = 0
    rows: int = 0
    padded_rows: int = 0
    forward_s: float = 0.0
    sample_s: float = 0.0
    emit_s: float = 0.0
    prefills: int = 0
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    firsts: int = 0
    wait_s: float = 0.0
    wait_max_s: float = 0.0
    to_first_s: float = 0.0
    #: Time the engine thread waited with no work at all (not counted as the device's).
    idle_s: float = 0.0
    #: ``{kind: [spans, seconds]}`` of device time (``DeviceClock``; CUDA only).
    device: dict = field(default_factory=dict)

    def add_decode(self, rows: int, padded_rows: int, forward_s: float, sample_s: float, emit_s: float,
                   varlen: bool = False) -> None:
        self.steps += 1
        self.varlen_steps += varlen
        self.rows += rows
        self.padded_rows += padded_rows
        self.forward_s += forward_s
        self.sample_s += sample_s
        self.emit_s += emit_s

    def add_prefill(self, tokens: int, seconds: float) -> None:
        self.prefills += 1
        self.prefill_tokens += tokens
        self.prefill_s += seconds

    def add_device(self, collected: dict[str, tuple[int, float]]) -> None:
        for kind, (spans, seconds) in collected.items():
            entry = self.device.setdefault(kind, [0, 0.0])
            entry[0] += spans
            entry[1] += seconds

    def add_first(self, wait_s: float, to_first_s: float) -> None:
        """A first token: ``wait_s`` from arrival to its first prompt chunk, ``to_first_s``
        from arrival to the token (what time to first token is made of inside the engine)."""
        self.firsts += 1
        self.wait_s += wait_s
        self.wait_max_s = max(self.wait_max_s, wait_s)
        self.to_first_s += to_first_s

    def summary(self, wall_s: float | None = None) -> str:
        n = max(self.steps, 1)
        return (f"{self.steps} decode steps ({self.varlen_steps} variable-length), {self.rows / n:.1f} rows per step ({self.padded_rows / n:.1f} with "
                f"bucket padding); per step: forward {self.forward_s / n * 1e3:.2f} ms (host), sample "
                f"{self.sample_s / n * 1e3:.2f} ms, emit (with the wait for the device) {self.emit_s / n * 1e3:.2f} ms; {self.prefills} prefill "
                f"chunks of {self.prefill_tokens / max(self.prefills, 1):.0f} tokens, "
                f"{self.prefill_s / max(self.prefills, 1) * 1e3:.1f} ms each; {self.firsts} first tokens, "
                f"{self.to_first_s / max(self.firsts, 1) * 1e3:.0f} ms after arrival on average, of which "
                f"{self.wait_s / max(self.firsts, 1) * 1e3:.0f} ms waiting for a first chunk "
                f"(at most {self.wait_max_s * 1e3:.0f} ms)" + self._device_summary(wall_s))

    def _device_summary(self, wall_s: float | None) -> str:
        """The device's own time (CUDA events around each step): per decode step, per prefill
        chunk, and how busy the device was while the engine had work (the interval less the
        time it waited for requests). Below 100 %, the device waited for the host."""
        if not self.device or wall_s is None:
            return ""
        decode, prefill = self.device.get("decode", [0, 0.0]), self.device.get("prefill", [0, 0.0])
        worked = max(wall_s - self.idle_s, 1e-9)
        return (f"; device time: decode {decode[1] / max(decode[0], 1) * 1e3:.2f} ms per step, prefill "
                f"{prefill[1] / max(prefill[0], 1) * 1e3:.2f} ms per chunk, busy "
                f"{min((decode[1] + prefill[1]) / worked, 1.0):.1%} of the {worked:.1f} s with work")


@dataclass
class DecodeCost:
    """One layer's decode attention at one batch bucket, as measured at start-up: the
    variable-length kernel as ``base + per_token × live tokens``, the masked call by width."""

    base: float
    per_token: float
    masked: dict[int, float]
    kernel: str = "variable-length"

    @classmethod
    def fit(cls, points: list[tuple[int, float]], masked: dict[int, float],
            kernel: str = "variable-length") -> "DecodeCost":
        (l1, t1), (l2, t2) = sorted(points)
        per = max((t2 - t1) / max(l2 - l1, 1), 0.0)
        return cls(max(t1 - per * l1, 0.0), per, masked, kernel)

    def varlen_ms(self, live: int) -> float:
        return self.base + self.per_token * live

    def masked_ms(self, width: int) -> float:
        return self.masked[width]

    def __str__(self) -> str:
        masked = "/".join(f"{w}: {ms * 1e3:.0f}" for w, ms in self.masked.items())
        text = f"{self.kernel} {self.base * 1e3:.0f} us + {self.per_token * 1e6:.2f} ns/token"
        return text + (f", masked {masked} us" if masked else "")


class _Shutdown(EngineError):
    status_code = 503
    error_type = "service_unavailable"
    code = "shutting_down"


def sliding_window(config) -> int | None:
    """The attention window of a config whose layers (some or all) slide, else None."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    types = getattr(config, "layer_types", None)
    if types is not None:
        return window if any("sliding" in t for t in types) else None
    return window if getattr(config, "use_sliding_window", True) else None


def _pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


#: SDPA kernels a prefill step may use on CUDA: every one but cuDNN's. cuDNN's attention
#: builds an execution plan for each new (query, key) length pair and caches it; a packed
#: prefill step's key count differs from step to step (prompts continue at other
#: positions), so nearly every step paid for a new plan. On an H200 with the
#: DeepSeek-LLM-7B shape that was about 75 ms per step whatever its size (a 384-token step:
#: 116 ms with a new key count, 39 ms with the memory-efficient kernel;
#: ``benchmarks/prefill_probe.py``). Decode steps keep cuDNN: their shapes are the captured
#: buckets, planned once.
PREFILL_SDPA_BACKENDS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
#: Errors after which the device cannot run another step: PyTorch raises its CUDA runtime
#: errors (illegal memory access, device-side assert, launch failure) as ``AcceleratorError``;
#: running out of memory is ``OutOfMemoryError`` and fails only its step.
DEVICE_FAULTS: tuple[type[BaseException], ...] = tuple(
    t for t in (getattr(torch, "AcceleratorError", None),) if isinstance(t, type))


def prefill_attention(device: torch.device) -> contextlib.AbstractContextManager:
    """The attention kernels for a prefill forward on ``device`` (see ``PREFILL_SDPA_BACKENDS``)."""
    return sdpa_kernel(list(PREFILL_SDPA_BACKENDS)) if device.type == "cuda" else contextlib.nullcontext()


class TransformersEngine(Engine):
    """Loads a local model folder with ``from_pretrained`` and serves it with continuous batching."""

    #: Share of the free device memory (after the weights) the KV store takes; the rest holds
    #: the captured graphs' workspace, prefill activations and the allocator's slack.
    KV_MEMORY_FRACTION = 0.9

    def __init__(self, model_dir: str | os.PathLike, *, device: str | None = None,
                 dtype: str | None = None, max_batch: int = 32, max_queue: int = 128,
                 max_model_len: int | None = None, max_prefill_per_step: int = 16,
                 max_prefill_tokens: int = 2048, kv_cache_tokens: int | None = None,
                 model_version: str | None = None, cuda_graphs: bool | None = None,
                 bucketed: bool | None = None, attention: str = "auto", fuse_norms: bool | None = None,
                 fuse_projections: bool | None = None, fuse_rotary: bool | None = None,
                 fuse_residuals: bool | None = None, overlap: bool = True, attention_choice: bool = True, prefill_graphs: bool = True,
                 kv_cache_dtype: str = "auto"):
        self.model_dir = Path(model_dir)
        self.device = _pick_device(device)
        self.dtype_name = dtype or "auto"
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._max_model_len = max_model_len
        self.max_prefill_per_step = max_prefill_per_step
        #: Prompt tokens prefilled per engine step (the chunked-prefill budget).
        self.max_prefill_tokens = max_prefill_tokens
        #: Tokens the KV store holds (slots × max_model_len). None: from free memory on
        #: CUDA, ``max_batch`` full slots on the CPU.
        self.kv_cache_tokens = kv_cache_tokens
        #: None = on CUDA; False forces the eager decode step.
        self.cuda_graphs = cuda_graphs
        #: Pad decode steps to batch and width buckets. Always on with CUDA graphs; on the
        #: CPU it runs the graph path's exact shapes without capture (the tests compare it
        #: with the unpadded step).
        self.bucketed = bucketed
        #: "auto" (variable-length on CUDA when its kernel checks out, else masked SDPA),
        #: "varlen" (also on the CPU, with the reference kernel: what the tests use), "masked".
        if attention not in ("auto", "varlen", "masked"):
            raise ValueError(f"attention must be auto, varlen or masked, not {attention!r}")
        self.attention = attention
        #: What the KV store keeps: "auto" (the model's dtype) or "fp8" (8-bit e4m3: half the
        #: memory and half the decode attention's reads; needs the variable-length attention,
        #: whose kernels widen it as they read).
        if kv_cache_dtype != "auto" and kv_cache_dtype not in STORE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be auto or one of {sorted(STORE_DTYPES)}, not {kv_cache_dtype!r}")
        if (conflict := kv_store_conflict(kv_cache_dtype, attention)) is not None:
            raise ValueError(conflict)
        self.kv_cache_dtype = kv_cache_dtype
        if kv_cache_dtype != "auto":  # the masked call reads the store as the model's dtype only
            attention_choice = False
        #: Fused RMSNorm kernels (``fused_norm``): None = on CUDA, where launches count.
        self.fuse_norms = fuse_norms
        self.fused_norms = 0
        #: Which fused form the norms run (``fused_norm.pick``) and why, for the log.
        self.norm_path = "not fused"
        #: Merged q/k/v and gate/up matrix multiplies (``fused_linear``): None = on CUDA.
        self.fuse_projections = fuse_projections
        self.fused_projections = 0
        #: Merged MLPs whose ``silu(gate) * up`` is one kernel (``fused_activation``).
        self.silu_kernels = 0
        #: The rotary embedding as one kernel (``fused_rotary``): None = on CUDA.
        self.fuse_rotary = fuse_rotary
        self.fused_rotary = 0
        #: Sampling by the one-pass kernel (``fused_sampling``) where it runs and checked out at
        #: start-up; ``sampling_path`` says which form draws.
        self.fused_sampling = False
        self.sampling_path = "not loaded"
        #: Residual adds inside ``o_proj``/``down_proj`` (``fused_residual``): None = on CUDA.
        self.fuse_residuals = fuse_residuals
        self.fused_residuals = 0
        #: Launch each decode step before taking in the previous one (see ``_decode_step``).
        self.overlap = overlap
        #: With the variable-length attention: time it against the masked call at start-up and
        #: let each decode step take the cheaper (False: every decode step uses the kernel).
        self.attention_choice = attention_choice
        #: With the variable-length attention: static prefill shapes, captured as graphs on CUDA
        #: (False: the unpadded packed prefill, eager).
        self.prefill_graphs = prefill_graphs
        self._inflight: _Step | None = None
        self.attention_path = "not loaded"
        self._varlen: slot_attention.Kernel | None = None
        #: Decode kernels that passed the start-up check (beside ``_varlen``), and the one each
        #: batch bucket uses (the fastest in the start-up timing; ``_decode_default`` elsewhere).
        self._decode_candidates: list[slot_attention.Kernel] = []
        self._decode_kernels: dict[int, slot_attention.Kernel] = {}
        self._decode_default: slot_attention.Kernel | None = None
        self._decode_costs: dict[int, DecodeCost] | None = None
        self.decode_path = "not loaded"
        #: How prefill steps run: ``cuda-graphs (…)``, ``eager`` or ``eager (why)``.
        self.prefill_path = "eager"
        self._model_version = model_version or self.model_dir.name
        self.model = None
        self.tokenizer = None
        self._ready = False
        self._failed: str | None = None  # a device fault no step can recover from (EngineState.failed)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._incoming: list[_Sequence] = []
        self._waiting: deque[_Sequence] = deque()
        self._prefilling: list[_Sequence] = []
        self._running: list[_Sequence] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._cancelled_total = 0
        self._finished_total = 0
        self.step_stats = StepStats()
        self._stats_since = time.perf_counter()
        #: Device time of each step (CUDA events), for the account's "busy" figure.
        self._clock = DeviceClock(self.device)
        self._kv: SlotKVCache | None = None
        self._graphs: dict[tuple[int, int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._prefill_graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._graph_kinds: set[bool] = set()  # attentions with captured decode graphs (True: variable-length)
        self._static_prefill = False
        #: For checks and tests: keep each finished request's token ids in ``last_tokens``.
        self.record_tokens = False
        self._outbox: list[tuple[_Sequence, tuple]] = []
        self.last_tokens: dict[str, list[int]] = {}

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def model_version(self) -> str:
        return self._model_version

    @property
    def max_model_len(self) -> int | None:
        return self._max_model_len

    #: GIL switch interval while a CUDA engine runs. The engine thread gives the GIL up at
    #: every wait for the device (a graph replay, the copy of the sampled tokens); getting
    #: it back from a busy event loop takes up to one interval (5 ms by default), which at
    #: a 7-30 ms step is a large share of it.
    SWITCH_INTERVAL_S = 0.0005

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        if self.device.type == "cuda":
            sys.setswitchinterval(self.SWITCH_INTERVAL_S)
        self._thread = threading.Thread(target=self._loop, name="seekwatch-engine", daemon=True)
        self._thread.start()
        self._ready = True

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.dtype_name == "auto":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, self.dtype_name)
        self.dtype = dtype
        self.store_dtype = STORE_DTYPES.get(self.kv_cache_dtype, dtype)
        t0 = time.monotonic()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype).to(self.device)
        self.model.eval()
        if self.fuse_norms if self.fuse_norms is not None else self.device.type == "cuda":
            form, why = fused_norm.pick(self.model, self.max_batch)  # the largest decode step's rows
            self.fused_norms = fused_norm.fuse_rms_norms(self.model, form=form)
            self.norm_path = f"{form} ({why})"
        if self.fuse_projections if self.fuse_projections is not None else self.device.type == "cuda":
            self.fused_projections = fuse_linear_projections(self.model)
            self.silu_kernels = count_silu_kernels(self.model)
        if self.fuse_rotary if self.fuse_rotary is not None else self.device.type == "cuda":
            try:
                from inference.engine.fused_rotary import fuse_rotary
            except ImportError:  # a torch without Triton: transformers' rotary embedding stays
                pass
            else:
                self.fused_rotary = fuse_rotary(self.model)
        if self.fuse_residuals if self.fuse_residuals is not None else self.device.type == "cuda":
            self.fused_residuals = fuse_residual_adds(self.model)  # last: its check runs the model as served
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        cfg_len = getattr(self.model.config, "max_position_embeddings", None) or 4096
        self._max_model_len = min(self._max_model_len or cfg_len, cfg_len)
        window = sliding_window(self.model.config)
        if window is not None and window < self._max_model_len:
            # The step's 4-D mask is full causal; within the window that is what a sliding
            # layer computes, so the context is capped there rather than computed wrongly.
            log.warning("%s uses sliding-window attention (%d tokens): context capped at %d tokens",
                        self.model_dir.name, window, window)
            self._max_model_len = window
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_token_ids = tuple(eos if isinstance(eos, (list, tuple)) else [eos])
        template = getattr(self.tokenizer, "chat_template", None) or ""
        self.reasoning = "<think>" in str(template)
        with torch.inference_mode():  # warm-up: first request should not pay for lazy init
            self.model(input_ids=torch.tensor([[self.eos_token_ids[0]]], device=self.device))
        self._check_sampling()
        self._pick_attention()
        self._make_store()
        self._io = torch.zeros((2, self._kv.slots), dtype=torch.long, device=self.device)
        self._rows = torch.arange(self._kv.slots, device=self.device)
        # Two of each host buffer, used in turn by consecutive steps: one step's inputs are
        # still being copied (or its tokens read) while the next one's are written. Pinned
        # memory on CUDA, so the copies are asynchronous.
        pin = self.device.type == "cuda"
        self._stage_in = [torch.zeros((4, self._kv.slots), dtype=torch.long, pin_memory=pin) for _ in range(2)]
        self._stage_out = [torch.zeros(self._kv.slots, dtype=torch.long, pin_memory=pin) for _ in range(2)]
        # a step's inputs on the device: token, position, source row in the previous step, and
        # the order its rows' attention is launched in (longest first). The order row is the
        # identity between steps (a step puts it back), so any other caller of the decode
        # forward (start-up checks, captures, benchmarks writing ``_io``) gets plain order.
        self._staged = torch.zeros((4, self._kv.slots), dtype=torch.long, device=self.device)
        self._staged[3] = self._rows
        self._events = [torch.cuda.Event() for _ in range(2)] if pin else []
        self._flip = 0
        self.batch_buckets = batch_sizes(self._kv.slots)
        self.width_buckets = buckets(self._max_model_len, min(256, self._max_model_len))
        if (self.attention_choice or self._decode_candidates) and self.device.type in self.TIMED_DEVICES:
            try:
                with torch.inference_mode():
                    self._decode_costs = self._time_decode_attention()
            except Exception:  # noqa: BLE001 - without timings every decode step is variable-length
                self._decode_kernels.clear()
                log.exception("timing the decode attention failed; decode steps use the variable-length kernel")
        if self._varlen is not None and (self._decode_candidates or self._decode_kernels):
            self.attention_path += f"; decode: {self._decode_kernel_summary()}"
        use_graphs = self.cuda_graphs if self.cuda_graphs is not None else self.device.type == "cuda"
        if self.bucketed is None:
            self.bucketed = use_graphs
        self._setup_static_prefill()
        with torch.inference_mode():
            try:
                self._check_slot_path()
            except Exception:
                if not self._static_prefill:
                    raise
                # the static prefill shapes (padding and empty sequences) are the newer path:
                # without them the engine still serves, with the packed prefill it had before
                log.exception("the static prefill shapes failed the start-up check; prefill runs unpadded")
                self._static_prefill = False
                self.prefill_path = "eager (static shapes failed the start-up check)"
                self._check_slot_path()
            if use_graphs and self.device.type == "cuda":
                if not self._static_prefill:
                    self._warm_prefill_shapes()
                self._capture_graphs()
            elif use_graphs:
                self.decode_path = "eager (CUDA graphs need a CUDA device)"
            else:
                self.decode_path = "eager" + (" (bucketed shapes)" if self.bucketed else "")
        log.info("loaded %s on %s (%s) in %.1fs; KV store %d tokens (%s): %d slots of %d tokens; max batch %d; "
                 "prefill %d tokens per step; attention: %s; fused RMSNorms: %d, %s; fused projections: %d "
                 "(SiLU kernel in %d MLPs); fused rotary embeddings: %d layers; residual adds in the projections: "
                 "%d layers; sampling: %s; decode path: %s; prefill path: %s",
                 self.model_dir, self.device, dtype, time.monotonic() - t0, self._kv.tokens,
                 str(self.store_dtype).removeprefix("torch."), self._kv.slots,
                 self._kv.max_len, self._kv.slots, self.max_prefill_tokens, self.attention_path, self.fused_norms,
                 self.norm_path, self.fused_projections, self.silu_kernels, self.fused_rotary, self.fused_residuals,
                 self.sampling_path, self.decode_path, self.prefill_path)

    def _check_sampling(self) -> None:
        """Turn the one-pass sampling kernel on where it runs and, compiled here (so no request
        pays for that), picks every greedy row's largest logit, with and without EOS
        suppressed, and draws sampled rows inside the vocabulary."""
        try:
            from inference.engine import fused_sampling
        except ImportError:
            self.sampling_path = "plain (no Triton)"
            return
        vocab = self.model.get_output_embeddings().out_features
        g = torch.Generator().manual_seed(6)
        logits = (torch.randn(4, vocab, generator=g) * 4).to(self.device, self.dtype)
        if not fused_sampling.supported(logits, len(self.eos_token_ids)):
            self.sampling_path = "plain"
            return
        eos = torch.tensor(self.eos_token_ids, dtype=torch.int32, device=self.device)
        masked = logits.float().index_fill(1, eos.long(), float("-inf"))
        try:
            greedy = fused_sampling.sample(logits, torch.zeros(4, device=self.device))
            banned = fused_sampling.sample(logits, torch.zeros(4, device=self.device),
                                           torch.ones(4, dtype=torch.int32, device=self.device), eos)
            drawn = fused_sampling.sample(logits, torch.full((4,), 0.7, device=self.device))
            ok = (torch.equal(greedy, logits.float().argmax(1)) and torch.equal(banned, masked.argmax(1))
                  and bool(((drawn >= 0) & (drawn < vocab)).all()))
            why = "" if ok else " (the kernel disagreed with argmax at start-up)"
        except Exception as exc:  # noqa: BLE001 - sampling still runs, in the plain form
            log.exception("the sampling kernel failed its start-up check; sampling runs in the plain form")
            ok, why = False, f" (the kernel failed at start-up: {exc.__class__.__name__})"
        self.fused_sampling = ok
        self.sampling_path = "one-pass kernel" if ok else "plain" + why

    #: Devices on which start-up times the two decode attentions (elsewhere: variable-length
    #: where forced, masked otherwise).
    TIMED_DEVICES = ("cuda",)

    #: Largest relative difference allowed between the fast kernel and the reference at start-up.
    VARLEN_TOLERANCE = 2e-2

    def _pick_attention(self) -> None:
        """Use the variable-length attention where its kernel runs and agrees with the
        reference on this device; otherwise the masked SDPA path. ``attention_path`` (in
        ``/readyz`` with the decode path) says which, and why."""
        if self.attention == "masked":
            self.attention_path = "masked SDPA (--attention masked)"
            return
        eight_bit = self.store_dtype != self.dtype
        kernel, why = slot_attention.kernel_for(self.device, self.dtype, self.store_dtype)
        if kernel is None and self.attention == "varlen":
            kernel, why = slot_attention.reference_varlen, "variable length, reference kernel (SDPA per sequence)"
        if kernel is None and eight_bit:
            raise EngineError(f"an 8-bit KV store needs a variable-length attention kernel: {why} "
                              f"(--attention varlen runs the slow reference kernel)")
        if kernel is None:
            self.attention_path = f"masked SDPA ({why})"
            return
        fault = self._kernel_fault(kernel)
        if fault is not None and eight_bit:
            raise EngineError(f"an 8-bit KV store needs a variable-length attention kernel: {why} {fault[0]}")
        if fault is not None:
            self.attention_path = f"masked SDPA ({why} {fault[0]})"
            log.warning("variable-length attention unavailable: %s", self.attention_path)
            return
        slot_attention.use_on(self.model)
        self._varlen = self._decode_default = kernel
        self.attention_path = why
        _, kv_heads, _ = kv_geometry(self.model.config)
        for candidate in slot_attention.decode_kernels(self.device, self.dtype, self.model.config.num_attention_heads,
                                                       kv_heads, self.store_dtype):
            fault = self._kernel_fault(candidate, decode_only=True)
            if fault is None:
                self._decode_candidates.append(candidate)
            else:  # a kernel this build or card lacks (raised), or one that computes something else
                message, raised = fault
                log.log(logging.INFO if raised else logging.WARNING, "decode kernel %s left out: %s",
                        candidate.label, message)
        if self._decode_candidates and self.device.type not in self.TIMED_DEVICES:
            self._decode_default = self._decode_candidates[0]  # nothing timed: the first that checks out

    def _kernel_fault(self, kernel: slot_attention.Kernel, decode_only: bool = False) -> tuple[str, bool] | None:
        """Why ``kernel`` must not serve this model on this device, and whether it raised in
        the start-up check (else it disagreed with the reference beyond ``VARLEN_TOLERANCE``);
        None if it may."""
        cfg = self.model.config
        _, kv_heads, head_dim = kv_geometry(cfg)
        try:
            err = slot_attention.check_kernel(kernel, self.device, self.dtype, cfg.num_attention_heads,
                                              kv_heads, head_dim, decode_only=decode_only,
                                              store_dtype=self.store_dtype)
        except Exception as exc:  # noqa: BLE001 - any failure rules the kernel out
            return f"failed its check: {exc.__class__.__name__}: {exc}", True
        if not err < self.VARLEN_TOLERANCE:
            return f"disagreed with the reference: relative error {err:.3g}", False
        return None

    def _time_decode_attention(self) -> dict[int, "DecodeCost"] | None:
        """Measure, per batch bucket, one layer's decode attention on the store: every decode
        kernel that passed its check (the variable-length kernel, the paged ones, Triton's), each on
        rows of short and of long lengths (a line through the two points: cost by live
        tokens), keeping the fastest for that bucket; with ``attention_choice``, also the
        masked SDPA call at every width bucket (its cost does not depend on the lengths: it
        reads the width). The decode step then takes whichever attention costs less for its
        actual rows. Run on CUDA at start-up."""
        if self._varlen is None:
            return None
        cfg = self.model.config
        _, kv_heads, head_dim = kv_geometry(cfg)
        heads, kv, g = cfg.num_attention_heads, self._kv, torch.Generator().manual_seed(4)
        scale, costs = head_dim ** -0.5, {}
        for rows in self.batch_buckets:
            q = torch.randn(rows, heads, head_dim, generator=g).to(self.device, self.dtype)
            length_sets = [torch.randint(1, top + 1, (rows,), generator=g)
                           for top in (max(1, self._max_model_len // 4), self._max_model_len)]
            best: tuple[float, slot_attention.Kernel, list] | None = None
            # timed as the step runs it: writing the step's keys/values too (8-bit store: the cache does)
            new = None if kv.eight_bit else tuple(
                torch.randn(rows, kv_heads, head_dim, generator=g).to(self.device, self.dtype) for _ in range(2))
            for kernel in [self._varlen, *self._decode_candidates]:
                points = []
                try:
                    for lengths in length_sets:
                        pos = (lengths - 1).unsqueeze(1).to(self.device)
                        # an order too (the identity), so the form timed is the form captured
                        att = kv.decode_attention(kernel, rows, pos, self._max_model_len,
                                                  None if new is None else kv.write_index(self._rows[:rows], pos),
                                                  self._rows[:rows])
                        points.append((int(lengths.sum()), slot_attention.time_call(
                            lambda: slot_attention.attend(att, 0, q, scale, new), self.device)))
                except Exception as exc:  # noqa: BLE001 - a kernel that fails at this shape is not used here
                    log.info("decode kernel %s failed at batch %d: %s", kernel.label, rows, exc)
                    continue
                total = sum(t for _, t in points)
                if best is None or total < best[0]:
                    best = (total, kernel, points)
            _, self._decode_kernels[rows], points = best
            masked = {}
            for width in self.width_buckets if self.attention_choice else []:
                pos = torch.full((rows, 1), width - 1, device=self.device)
                k, v = kv.keys[0][:rows, :width].transpose(1, 2), kv.values[0][:rows, :width].transpose(1, 2)
                mask, q4 = kv.mask(pos, width), q.unsqueeze(2)
                masked[width] = slot_attention.time_call(lambda: torch.nn.functional.scaled_dot_product_attention(
                    q4, k, v, attn_mask=mask, scale=scale, enable_gqa=heads != kv_heads), self.device)
            costs[rows] = DecodeCost.fit(points, masked, self._decode_kernels[rows].label)
        log.info("decode attention per layer, by batch: %s",
                 "; ".join(f"{rows}: {c}" for rows, c in costs.items()))
        return costs

    def _decode_kernel(self, rows: int) -> slot_attention.Kernel:
        """The variable-length kernel a decode step over ``rows`` rows uses."""
        return self._decode_kernels.get(rows, self._decode_default)

    def _decode_kernel_summary(self) -> str:
        """Which decode kernel serves which batch buckets, e.g. ``cuDNN (paged) at 1-8, …``."""
        runs: list[list] = []
        for rows in self.batch_buckets:
            label = self._decode_kernel(rows).label
            if runs and runs[-1][0] == label:
                runs[-1][2] = rows
            else:
                runs.append([label, rows, rows])
        return ", ".join(f"{label} at batch {a}" + (f"-{b}" if b != a else "") for label, a, b in runs)

    def _decode_shape(self, n: int, longest: int, live: int) -> tuple[int, int, bool]:
        """``(rows, width, varlen)`` of a decode step over ``n`` rows whose longest row is
        ``longest`` tokens and whose rows hold ``live`` tokens together: the padded shapes
        (graph buckets) and which attention reads the store, the cheaper by the start-up
        timings (variable-length where there are no timings)."""
        rows = bucket_for(n, self.batch_buckets) if self.bucketed else n
        width = bucket_for(longest, self.width_buckets) if self.bucketed else longest
        if self._varlen is None:
            return rows, width, False
        cost = (self._decode_costs or {}).get(rows)
        varlen = not (cost is not None and cost.masked
                      and cost.masked_ms(bucket_for(width, self.width_buckets)) <= cost.varlen_ms(live))
        if self._graph_kinds and varlen not in self._graph_kinds:  # that attention's graphs were left out
            varlen = not varlen
        return (rows, self._max_model_len if self.bucketed else width, True) if varlen else (rows, width, False)

    def _make_store(self) -> None:
        """Size the KV store: ``kv_cache_tokens`` if given, else on CUDA a share of the free
        memory; one slot of ``max_model_len`` per sequence, at most ``max_batch`` slots."""
        per_token = bytes_per_token(self.model.config, self.store_dtype)
        tokens = self.kv_cache_tokens
        if tokens is None and self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            tokens = int(free * self.KV_MEMORY_FRACTION) // per_token
        slots = self.max_batch if tokens is None else min(self.max_batch, tokens // self._max_model_len)
        if slots < 1:
            raise EngineError(f"the KV store holds {tokens} tokens, less than one sequence of "
                              f"max_model_len={self._max_model_len}; lower --max-model-len")
        if slots < self.max_batch:
            log.warning("KV memory limits the batch to %d sequences of up to %d tokens (--max-batch %d); "
                        "a lower --max-model-len gives more", slots, self._max_model_len, self.max_batch)
        self._kv = SlotKVCache.for_model(self.model.config, self.dtype, self.device, slots, self._max_model_len,
                                         self.store_dtype)
        self.kv_cache_tokens = self._kv.tokens
        self.max_batch = slots  # what /readyz and the metrics report: the batch that can run

    def _check_slot_path(self) -> None:
        """The slot store must compute what the model computes without it: a short random
        prompt, prefilled in two chunks and decoded one step, against one plain forward over
        the same tokens. A model whose attention ignores the cache or the 4-D mask fails here
        at start-up instead of answering garbage."""
        g = torch.Generator().manual_seed(0)
        vocab = self.model.config.vocab_size
        ids = torch.randint(0, vocab, (1, 12), generator=g).to(self.device)
        ref = self.model(input_ids=ids).logits[0].float()
        slot = self._kv.slots - 1
        first = self._prefill_forward([(slot, ids[0, :7].tolist(), 0), ])
        second = self._prefill_forward([(slot, ids[0, 7:11].tolist(), 7)])
        self._io[0, 0], self._io[1, 0] = ids[0, 11], 11
        if slot != 0:
            self._kv.move([slot], [0], 11)
        steps = [self._decode_forward(1, 12, varlen)[0] for varlen in self._decode_kinds()]
        got = torch.stack([first[0], second[0], *steps]).float()
        want = ref[[6, 10] + [11] * len(steps)]
        err = slot_attention.relative_error(got, want)
        # float32 agrees to rounding; in half precision the two paths use different
        # attention kernels (and an 8-bit store rounds every key and value), so only a gross
        # disagreement (a cache the model ignored) fails.
        loose = self.dtype in (torch.bfloat16, torch.float16) or self.store_dtype != self.dtype
        if not err < (0.25 if loose else 1e-3):
            raise EngineError(f"{type(self.model).__name__}: the slot KV cache does not reproduce the model's "
                              f"own forward (relative error {err:.3g}); this architecture is not supported")

    # -- the forward passes --------------------------------------------------------------
    def _setup_static_prefill(self) -> None:
        """Static shapes for prefill steps, which a captured prefill graph needs: token
        buckets (:func:`prefill_sizes`) up to the step budget, which may exceed the context
        length, at most
        ``max_prefill_per_step`` chunks plus the padding sequence, and device buffers for the
        step's tokens, positions, write index and sequence table. Only with the
        variable-length attention (a masked step's mask is as wide as its keys) and padded
        shapes; on the CPU the same code runs eagerly (what the tests check)."""
        self._static_prefill = (self.prefill_graphs and self._varlen is not None and bool(self.bucketed)
                                and bool(self._keep_kw))
        if not self._static_prefill:
            return
        step = self._kv.TOKEN_STEP
        # up to the whole step budget, not the context length: several prompts share a step
        # (an H200 run before this spent 69 ms eagerly on steps of ~1,900 tokens at 256 streams)
        top = -(-self.max_prefill_tokens // step) * step
        self.prefill_buckets = prefill_sizes(top)
        self._pf_seqs = self.max_prefill_per_step + 1
        self._pf_long = torch.zeros((3, top), dtype=torch.long, device=self.device)  # ids, positions, write index
        self._pf_meta = torch.zeros(3 * self._pf_seqs + 2, dtype=torch.int32, device=self.device)
        self._pf_ends = torch.zeros(self._pf_seqs, dtype=torch.long, device=self.device)
        self.prefill_path = f"eager (static shapes: tokens {self.prefill_buckets})"

    def _stage_prefill(self, chunks: list[tuple[int, list[int], int]], tokens: int) -> int:
        """Write a step's chunks into the static prefill buffers, padded to the bucket of
        ``tokens``; returns the bucket. Through fresh pinned blocks (``upload``), so a step
        queued behind another never overwrites what that one still has to copy."""
        bucket = bucket_for(tokens, self.prefill_buckets)
        spans = [(slot, start, len(chunk)) for slot, chunk, start in chunks]
        positions, write, meta, ends = self._kv.packed_layout(spans, bucket, self._pf_seqs)
        ids = [t for _, chunk, _ in chunks for t in chunk]
        ids += [0] * (bucket - len(ids))  # ``tokens`` may exceed the chunks: a capture stages padding only
        self._pf_long[:, :bucket].copy_(upload([ids, positions, write], torch.long, self.device))
        self._pf_meta.copy_(upload(meta, torch.int32, self.device))
        self._pf_ends.copy_(upload(ends, torch.long, self.device))
        return bucket

    def _prefill_static(self, bucket: int) -> torch.Tensor:
        """One prefill forward over the static buffers at ``bucket`` tokens: the code a
        prefill graph captures. Returns ``[max_prefill_per_step + 1, vocab]`` logits (each
        chunk's last token, then rows to discard)."""
        kv, n, meta = self._kv, self._pf_seqs, self._pf_meta
        attention = slot_attention.SlotAttention(self._varlen, kv.flat_keys, kv.flat_values, meta[:n + 1],
                                                 meta[n + 1:2 * n + 2], meta[2 * n + 2:], bucket,
                                                 max(kv.max_len, bucket), causal=True)
        cache = SlotCache(kv, self._pf_long[2, :bucket], kv.max_len, reads=False)
        with prefill_attention(self.device):
            out = self.model(input_ids=self._pf_long[0, :bucket].unsqueeze(0),
                             position_ids=self._pf_long[1, :bucket].unsqueeze(0), attention_mask=None,
                             use_cache=True, **{self._cache_kw: cache}, logits_to_keep=self._pf_ends,
                             slot_attention=attention)
        return out.logits[0]

    def _prefill_forward(self, chunks: list[tuple[int, list[int], int]]) -> torch.Tensor:
        """One forward over prompt chunks ``(slot, token ids, first position)``, packed into
        one row; returns the logits of each chunk's last token ``[chunks, vocab]``. With
        static prefill shapes the row is padded to a token bucket and replayed as a graph
        where one was captured; otherwise it costs exactly the tokens it prefills."""
        tokens = sum(len(chunk) for _, chunk, _ in chunks)
        if self._static_prefill and tokens <= self.prefill_buckets[-1] and len(chunks) < self._pf_seqs:
            bucket = self._stage_prefill(chunks, tokens)
            captured = self._prefill_graphs.get(bucket)
            if captured is not None:
                captured[0].replay()
                return captured[1][:len(chunks)]
            return self._prefill_static(bucket)[:len(chunks)]
        spans = [(slot, start, len(chunk)) for slot, chunk, start in chunks]
        extra = {}
        if self._varlen is not None:
            cache, extra["slot_attention"], positions = self._kv.packed_varlen(self._varlen, spans)
            mask = None
        else:
            cache, mask, positions = self._kv.packed(spans)
        flat = [t for _, chunk, _ in chunks for t in chunk]
        flat += [0] * (positions.shape[1] - len(flat))
        ids = upload(flat, torch.long, self.device)
        ends = upload([n - 1 for n in itertools.accumulate(len(c) for _, c, _ in chunks)], torch.long, self.device)
        keep = {"logits_to_keep": ends} if self._keep_kw else {}
        with prefill_attention(self.device):
            out = self.model(input_ids=ids.unsqueeze(0), position_ids=positions, attention_mask=mask,
                             use_cache=True, **{self._cache_kw: cache}, **keep, **extra)
        logits = out.logits[0]
        return logits if keep else logits.index_select(0, ends)

    def _decode_logits(self, rows: int, width: int, varlen: bool) -> torch.Tensor:
        """The decode step over ``self._io``: its captured graph replayed where there is
        one (the logits are then its static output buffer), else run eagerly."""
        captured = self._graphs.get((rows, width, varlen))
        if captured is None:
            return self._decode_forward(rows, width, varlen)
        captured[0].replay()
        return captured[1]

    def _decode_kinds(self) -> list[bool]:
        """The attentions a decode step may use: ``True`` variable-length, ``False`` masked."""
        if self._varlen is None:
            return [False]
        return [True, False] if self.attention_choice else [True]

    def _decode_forward(self, rows: int, width: int, varlen: bool = False) -> torch.Tensor:
        """One decode step over slots ``0 … rows-1``; inputs come from ``self._io`` (token
        ids, positions; position -1 marks a padding row). With ``varlen`` each row reads its
        own columns (``width`` is only the kernel's bound); else one masked SDPA call reads
        ``width`` columns of every row. The exact code a CUDA graph captures. Returns the
        logits ``[rows, vocab]``."""
        kv = self._kv
        ids = self._io[0, :rows].unsqueeze(1)
        pos = self._io[1, :rows].unsqueeze(1)
        write = kv.write_index(self._rows[:rows], pos)
        if varlen:  # the attention writes the keys/values (in its kernel where it can), unless 8-bit
            fused = not kv.eight_bit
            cache = kv.decode_cache(rows, write, width, reads=False, writes=not fused)
            mask, extra = None, {"slot_attention": kv.decode_attention(self._decode_kernel(rows), rows, pos, width,
                                                                       write if fused else None,
                                                                       self._staged[3, :rows])}
        else:
            cache, mask, extra = kv.decode_cache(rows, write, width), kv.mask(pos, width), {}
        out = self.model(input_ids=ids, position_ids=pos.clamp(min=0), attention_mask=mask,
                         use_cache=True, **{self._cache_kw: cache}, **self._keep_kw, **extra)
        return out.logits[:, -1]

    def _warm_prefill_shapes(self) -> None:
        """Run one prefill of every padded size up to the step budget, so no request pays
        for a first use of a matrix shape (an H200 run showed first prefills 3-5x slower)."""
        t0 = time.monotonic()
        slot = self._kv.slots - 1
        step = self._kv.TOKEN_STEP
        for n in range(step, min(self.max_prefill_tokens, self._max_model_len) + 1, step):
            self._prefill_forward([(slot, [0] * n, 0)])
        torch.cuda.synchronize(self.device)
        log.info("prefill shapes up to %d tokens warmed in %.1fs", self.max_prefill_tokens, time.monotonic() - t0)

    def _capture_graphs(self) -> None:
        """Capture the decode step per batch bucket, for each attention (masked per width
        bucket, variable-length), largest first so the smaller graphs reuse the shared
        memory pool; check one replay of each attention against its eager step. An
        attention whose capture fails or disagrees is left out (the steps use the other);
        if both are, decode runs eagerly. Then the prefill graphs."""
        t0 = time.monotonic()
        pool = torch.cuda.graph_pool_handle()
        failures = []
        for varlen in self._decode_kinds():
            name = "variable-length" if varlen else "masked"
            try:
                self._capture_decode(varlen, pool)
                err = self._check_replay(varlen)
                if err is not None:
                    raise EngineError(f"graph replay disagreed with the eager step: {err}")
                self._graph_kinds.add(varlen)
            except Exception as exc:  # the other attention, or the eager step, still serves
                for key in [k for k in self._graphs if k[2] == varlen]:
                    del self._graphs[key]
                torch.cuda.synchronize(self.device)
                failures.append(f"{name}: {exc.__class__.__name__}: {exc}")
                log.exception("CUDA graph capture of the %s decode step failed", name)
        if not self._graph_kinds:
            self.decode_path = f"eager (CUDA graph capture failed: {'; '.join(failures)})"
            return
        kinds = " + ".join(([f"masked at width {self.width_buckets}"] if False in self._graph_kinds else [])
                           + (["variable-length"] if True in self._graph_kinds else []))
        self.decode_path = (f"cuda-graphs ({len(self._graphs)} captured in {time.monotonic() - t0:.1f}s: "
                            f"batch {self.batch_buckets} × ({kinds}))"
                            + (f"; not captured: {'; '.join(failures)}" if failures else ""))
        self._capture_prefill_graphs(pool)

    def _capture(self, forward, pool, stream: "torch.cuda.Stream | None" = None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """``forward`` run once on a side stream (lazy initialisation stays out of the
        graph), then captured into ``pool`` on ``stream`` (default: PyTorch's one capture
        stream); returns the graph and its output buffer.

        The engine's graphs run one at a time, so they share that stream. Graphs meant to
        run side by side on two streams need captures on two streams: cuBLAS keeps one
        workspace per stream, and a graph keeps the workspace its capture used, so two
        graphs captured on one stream and replayed at the same time overwrite each other's
        matrix-multiply workspace (split-K partial sums among them). On an H200 such a pair
        never finished; captured apart, it ran (``benchmarks/step_profile.py --overlap``)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            forward()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=stream):
            out = forward()
        return graph, out

    def _capture_decode(self, varlen: bool, pool) -> None:
        """Capture one attention's decode graphs (every batch bucket; every width bucket for
        the masked call, one width for the variable-length kernel)."""
        self._io[0].zero_()
        self._io[1].fill_(-1)  # every row a padding row: writes go to the trash column
        widths = [self._max_model_len] if varlen else list(reversed(self.width_buckets))
        for rows in reversed(self.batch_buckets):
            for width in widths:
                self._graphs[(rows, width, varlen)] = self._capture(
                    lambda: self._decode_forward(rows, width, varlen), pool)
        torch.cuda.synchronize(self.device)

    def _capture_prefill_graphs(self, pool) -> None:
        """Capture one prefill step per token bucket (static shapes, all-padding content),
        then check one replay against the same step run eagerly. A failure leaves prefill
        eager and says why; the decode graphs stay."""
        if not self._static_prefill:
            return
        t0 = time.monotonic()
        try:
            for bucket in reversed(self.prefill_buckets):
                self._stage_prefill([], bucket)
                self._prefill_graphs[bucket] = self._capture(lambda: self._prefill_static(bucket), pool)
            torch.cuda.synchronize(self.device)
            g = torch.Generator().manual_seed(5)
            ids = torch.randint(0, self.model.config.vocab_size, (40,), generator=g).tolist()
            replay = self._prefill_forward([(0, ids, 0)])[0].clone()
            err = slot_attention.relative_error(replay, self._prefill_static(bucket_for(40, self.prefill_buckets))[0])
            if not err < 2e-2:
                raise EngineError(f"prefill graph replay disagreed with the eager step (relative error {err:.3g})")
        except Exception as exc:  # prefill still runs, eagerly
            self._prefill_graphs.clear()
            torch.cuda.synchronize(self.device)
            self.prefill_path = f"eager (prefill graphs failed: {exc.__class__.__name__}: {exc})"
            log.exception("prefill graph capture failed; prefill runs eagerly")
            return
        self.prefill_path = (f"cuda-graphs ({len(self._prefill_graphs)} captured in {time.monotonic() - t0:.1f}s: "
                             f"tokens {self.prefill_buckets})")

    def _check_replay(self, varlen: bool) -> str | None:
        """One attention's replay against its eager step on a random prompt in slot 0 (two
        rows, one of them padding); a description of the difference, or None."""
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, self.model.config.vocab_size, (20,), generator=g).tolist()
        self._prefill_forward([(0, ids[:19], 0)])
        self._io[:, :2] = torch.tensor([[ids[19], 0], [19, -1]], device=self.device)
        rows = 2 if 2 in self.batch_buckets else self.batch_buckets[-1]
        width = self._max_model_len if varlen else bucket_for(20, self.width_buckets)
        eager = self._decode_forward(rows, width, varlen)[0].clone()
        graph, logits = self._graphs[(rows, width, varlen)]
        graph.replay()
        err = slot_attention.relative_error(logits[0], eager)
        if not err < 2e-2:  # the same kernels on the same inputs: any real difference is a capture bug
            return f"relative error {err:.3g}"
        return None

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
        return EngineState(ready=self._ready, running=len(self._running) + len(self._prefilling), waiting=waiting,
                           max_batch=self.max_batch, max_queue=self.max_queue,
                           cancelled_total=self._cancelled_total, finished_total=self._finished_total,
                           decode_path=self.decode_path, attention_path=self.attention_path,
                           prefill_path=self.prefill_path, failed=self._failed)

    # -- request side (event loop) -----------------------------------------------------
    def encode_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[EngineOutput]:
        if not self._ready or self._stopping:
            raise EngineNotReady(self._failed or "the model is still loading; retry shortly")
        prompt_ids = self.encode_prompt(request.messages)
        limit = self._max_model_len
        if len(prompt_ids) >= limit:
            exc = ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens, but the messages "
                f"take {len(prompt_ids)} tokens. Shorten the conversation or start a new one.")
            exc.prompt_tokens = len(prompt_ids)
            raise exc
        room = limit - len(prompt_ids)
        sp = request.sampling
        max_new = min(sp.max_tokens, room) if sp.max_tokens else room
        seq = _Sequence(request.request_id, prompt_ids, sp, max_new,
                        asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if len(self._incoming) + len(self._waiting) >= self.max_queue:
                exc = QueueFull(f"the server is at capacity ({self.max_queue} requests waiting); retry shortly")
                exc.prompt_tokens = len(prompt_ids)
                raise exc
            self._incoming.append(seq)
        self._wake.set()
        return OutputStream(self._stream(seq), lambda: self._abandon(seq))

    async def _abandon(self, seq: _Sequence) -> None:
        """The client went away before its stream was read: the engine drops the sequence."""
        if not seq.done:
            seq.cancelled = True
            self._wake.set()

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
            await self._abandon(seq)

    # -- engine thread -----------------------------------------------------------------
    def _emit(self, seq: _Sequence, item) -> None:
        try:
            seq.loop.call_soon_threadsafe(seq.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutdown)
            seq.cancelled = True

    def _flush(self) -> None:
        """Hand a step's tokens to the event loop in one call per loop, not one per row:
        each ``call_soon_threadsafe`` wakes the loop through its self-pipe (a system call
        and a GIL hand-over), which at 256 rows was 256 wake-ups per step."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for seq, item in self._outbox:
            by_loop.setdefault(seq.loop, []).append((seq.queue, item))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the event loop is gone (shutdown)
                pass

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._stopping:
                self._wake.clear()
                try:
                    self._drop_cancelled()
                    self._admit()
                    if not self._running and not self._prefilling:
                        with self._lock:
                            idle = not self._incoming and not self._waiting
                        if idle:
                            t0 = time.perf_counter()
                            self._wake.wait()
                            self.step_stats.idle_s += time.perf_counter() - t0
                        continue
                    # a prefill step is launched first and read last: the decode step launched
                    # in between keeps the device busy while the host takes the first tokens
                    launched = self._prefill_step() if self._prefilling else None
                    if self._running:
                        self._decode_step()
                        self._flush()
                    if launched is not None:
                        self._finish_prefill(launched)
                        self._flush()
                except Exception as exc:  # a failed step fails its batch, not the node
                    log.exception("engine step failed")
                    if isinstance(exc, DEVICE_FAULTS):
                        # a device fault (illegal memory access, device-side assert) poisons
                        # the CUDA context: every later step would fail the same way
                        first_line = (str(exc).splitlines() or [""])[0]
                        self._failed = (f"the device failed ({exc.__class__.__name__}: {first_line}); "
                                        "only a restart recovers")
                        self._ready = False
                        log.error("%s; /healthz now fails", self._failed)
                    self._flush()
                    for seq in self._running + self._prefilling:
                        seq.done = True
                        self._emit(seq, EngineError(f"generation failed: {exc}"))
                    self._running, self._prefilling = [], []
                    self._inflight = None
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
        for seq in self._running + self._prefilling + list(self._waiting) + self._incoming:
            self._emit(seq, _Shutdown("the server is shutting down"))

    def _free_slot(self) -> int | None:
        """A slot no sequence holds, from the top: decoding rows fill slots from 0 upward, so
        a prompt prefilled up here rarely has to move when it joins them."""
        held = {s.slot for s in self._prefilling}
        for slot in range(self._kv.slots - 1, len(self._running) - 1, -1):
            if slot not in held:
                return slot
        return None

    def _admit(self) -> None:
        """Waiting requests take free slots (in arrival order); their prompts are prefilled
        in chunks by the following steps."""
        with self._lock:
            self._waiting.extend(self._incoming)
            self._incoming.clear()
        while self._waiting and len(self._running) + len(self._prefilling) < self._kv.slots:
            seq = self._waiting.popleft()
            if seq.cancelled:
                self._cancelled_total += 1
                continue
            seq.slot = self._free_slot()
            seq.length = 0
            self._prefilling.append(seq)

    def _prefill_step(self) -> "_Prefill":
        """Launch one forward over up to ``max_prefill_tokens`` prompt tokens of at most
        ``max_prefill_per_step`` prompts (in arrival order); prompts that are complete get
        their first token chosen on the device. Nothing here waits for the device:
        :meth:`_finish_prefill` reads the first tokens after the loop has launched the next
        decode step (reading them here left the device idle while the host prepared that
        step, a few milliseconds per prefill step at 256 rows on an H200)."""
        chunks, budget = [], self.max_prefill_tokens
        for seq in self._prefilling[:self.max_prefill_per_step]:
            take = min(len(seq.prompt_ids) - seq.length, budget)
            if take <= 0:
                break
            chunks.append((seq, take))
            budget -= take
        t0 = time.perf_counter()
        now = time.monotonic()
        mark = self._clock.start()
        logits = self._prefill_forward([(s.slot, s.prompt_ids[s.length:s.length + n], s.length) for s, n in chunks])
        complete = []
        for i, (seq, n) in enumerate(chunks):
            if seq.started is None:
                seq.started = now
            seq.length += n
            if seq.length == len(seq.prompt_ids):
                complete.append(i)
        first = None
        if complete:
            group = [chunks[i][0] for i in complete]
            # the completed prompts' rows: a slice, or rows picked through a pinned upload
            # (indexing with a Python list copies it to the device from pageable memory,
            # which waits for the device)
            picked = (logits[:len(complete)] if complete == list(range(len(complete)))
                      else logits.index_select(0, upload(complete, torch.long, logits.device)))
            tokens = sample_next_tokens(picked, [s.sampling for s in group], [[] for _ in group],
                                        self.eos_token_ids, to_host=False, fused=self.fused_sampling)
            cuda = self.device.type == "cuda"
            first = _Step.copy_out(group, tokens, torch.empty(len(group), dtype=torch.long, pin_memory=cuda),
                                   torch.cuda.Event() if cuda else None)
        self._clock.stop(mark, "prefill")
        return _Prefill(first, sum(n for _, n in chunks), time.perf_counter() - t0)

    def _finish_prefill(self, launched: "_Prefill") -> None:
        """Take in a launched prefill step: each complete prompt's first token is handed out
        and its sequence joins the decoding rows (from the next decode step on)."""
        t0 = time.perf_counter()
        step = launched.first
        if step is not None:
            tokens = step.read()
            first_at = time.monotonic()
            for seq, token in zip(step.seqs, tokens):
                self.step_stats.add_first(seq.started - seq.arrival, first_at - seq.arrival)
                self._prefilling.remove(seq)
                self._join(seq)
                self._after_token(seq, token, seq.started - seq.arrival)
            done = [i for i, s in enumerate(self._running) if s.done]
            if done:
                self._remove_rows(done)
        self.step_stats.add_prefill(launched.tokens, launched.launch_s + time.perf_counter() - t0)

    def _join(self, seq: _Sequence) -> None:
        """Move a prefilled sequence into slot ``n`` (the next decoding row), swapping with
        whatever prompt is being prefilled there."""
        n = len(self._running)
        if seq.slot != n:
            other = next((s for s in self._prefilling if s.slot == n), None)
            if other is None:
                self._kv.move([seq.slot], [n], seq.length)
            else:
                self._kv.move([seq.slot, n], [n, seq.slot], max(seq.length, other.length))
                other.slot = seq.slot
            seq.slot = n
        self._running.append(seq)

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
            if self.record_tokens:
                self.last_tokens[seq.request_id] = list(seq.generated)
        self._outbox.append((seq, (token, finish, queue_s)))

    def _decode_step(self) -> None:
        """Launch one decode step over every running row, then take in the step before it.

        The step is launched *before* the previous step's tokens are read on the host: a
        row's input token is taken on the device from the previous step's output, so the
        device runs step K+1 while the host hands step K's tokens to the event loop, moves
        finished rows out and admits new ones (vLLM schedules asynchronously for the same
        reason). The price: a row that finished at step K was computed once more in step
        K+1, and that token is dropped. Rows whose sampling needs their full history
        (presence/frequency penalties) take the previous step in first, as does
        ``overlap=False``.
        """
        t0 = time.perf_counter()
        prev = self._inflight
        if prev is not None and (not self.overlap or any(
                s.pending and (s.sampling.presence_penalty or s.sampling.frequency_penalty) for s in self._running)):
            self._inflight = None
            self._take(prev)
            prev = None
            if not self._running:
                return
        running = self._running
        n = len(running)
        longest = max(q.length + q.pending for q in running) + 1
        rows, width, varlen = self._decode_shape(n, longest, sum(q.length + q.pending + 1 for q in running))
        pad = rows - n
        index = {id(q): i for i, q in enumerate(prev.seqs)} if prev is not None else {}
        src = [index[id(q)] if q.pending else -1 for q in running]
        staged = self._stage_in[self._flip]
        lengths = [q.length + q.pending for q in running]
        # the attention takes the longest rows first, so the launch does not end waiting on one
        order = sorted(range(n), key=lengths.__getitem__, reverse=True) + list(range(n, rows))
        staged[:, :rows].copy_(torch.tensor([[0 if q.pending else q.generated[-1] for q in running] + [0] * pad,
                                             lengths + [-1] * pad, src + [-1] * pad, order]))
        inputs = self._staged[:, :rows]
        mark = self._clock.start()
        inputs.copy_(staged[:, :rows], non_blocking=True)
        if prev is not None:
            from_prev = prev.tokens.index_select(0, inputs[2].clamp(min=0))
            self._io[0, :rows] = torch.where(inputs[2] >= 0, from_prev, inputs[0])
        else:
            self._io[0, :rows] = inputs[0]
        self._io[1, :rows] = inputs[1]
        logits = self._decode_logits(rows, width, varlen)[:n]
        self._staged[3, :rows].copy_(self._rows[:rows])  # the identity again, after the step (stream order)
        t1 = time.perf_counter()
        tokens = sample_next_tokens(logits, [q.sampling for q in running], [q.generated for q in running],
                                    self.eos_token_ids, pending=[q.pending for q in running], to_host=False,
                                    fused=self.fused_sampling)
        step = _Step.copy_out(list(running), tokens, self._stage_out[self._flip][:n],
                              self._events[self._flip] if self.device.type == "cuda" else None)
        self._clock.stop(mark, "decode")
        self._flip ^= 1
        for q in running:
            q.pending += 1
        t2 = time.perf_counter()
        if prev is not None:
            self._take(prev)
        if self.overlap and self._running:
            self._inflight = step
        else:
            self._take(step)
        now = time.perf_counter()
        self.step_stats.add_decode(n, rows, t1 - t0, t2 - t1, now - t2, varlen)
        if now - self._stats_since >= StepStats.LOG_EVERY_S:
            self._log_step_stats(now)

    def _take(self, step: "_Step") -> None:
        """Read a launched step's tokens on the host (waiting for the device if it is still
        running) and hand them out; rows that finished leave the batch. A row that finished
        or was cancelled after the step was launched gets nothing from it."""
        tokens = step.read()
        self.step_stats.add_device(self._clock.collect())
        for seq, token in zip(step.seqs, tokens):
            seq.pending -= 1
            if seq.done:
                continue
            seq.length += 1
            self._after_token(seq, token)
        finished = [i for i, q in enumerate(self._running) if q.done]
        if finished:
            self._remove_rows(finished)

    def _log_step_stats(self, now: float) -> None:
        """Log the interval's account (``serve_bench`` reads these lines) and start a new one."""
        self.step_stats.add_device(self._clock.collect())
        log.info("engine: last %.0f s: %s", now - self._stats_since, self.step_stats.summary(now - self._stats_since))
        self.step_stats, self._stats_since = StepStats(), now

    def _drop_cancelled(self) -> None:
        gone = [i for i, s in enumerate(self._running) if s.cancelled and not s.done]
        for seq in [s for s in self._prefilling if s.cancelled]:
            self._prefilling.remove(seq)
            seq.done = True
            self._cancelled_total += 1
        if gone:
            self._cancelled_total += len(gone)
            for i in gone:
                self._running[i].done = True
            self._remove_rows(gone)

    def _remove_rows(self, rows: list[int]) -> None:
        """Drop decoding rows; each hole is filled by the last row (one slot copy), so the
        decoding rows stay in slots ``0 … n-1``."""
        for i in sorted(rows, reverse=True):
            last = len(self._running) - 1
            if i != last:
                moved = self._running[last]
                # with a step in flight, the column it is writing moves too
                self._kv.move([last], [i], moved.length + moved.pending)
                moved.slot = i
                self._running[i] = moved
            self._running.pop()


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
    kv_cache_tokens: int | None = None  # KV store size in tokens; default: from free GPU memory
    attention: str = "auto"           # auto, varlen, masked
    attention_choice: bool = True     # per decode step, the cheaper of the kernel and the masked call
    prefill_graphs: bool = True       # static prefill shapes, captured as graphs on CUDA
    kv_cache_dtype: str = "auto"      # auto (the model's dtype) or fp8 (8-bit e4m3 store)
    max_prefill_tokens: int = 2048    # prompt tokens prefilled per engine step


def kv_store_conflict(kv_cache_dtype: str, attention: str) -> str | None:
    """Why this store cannot serve with this attention (one line), or None: the masked call
    reads the store as the model's dtype, so an 8-bit store needs the variable-length one.
    The engine raises it as a ValueError, ``serve`` as a configuration error."""
    if kv_cache_dtype != "auto" and attention == "masked":
        return f"--kv-cache-dtype {kv_cache_dtype} needs the variable-length attention, not --attention masked"
    return None


def _add_arguments(g) -> None:
    g.add_argument("--model", metavar="DIR", help="local model folder (from_pretrained); required")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16, float32")
    g.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    g.add_argument("--kv-cache-tokens", type=int, metavar="N",
                   help="tokens the KV store holds (one slot of --max-model-len tokens per running sequence); "
                        "default: 90%% of the GPU memory free after loading, --max-batch slots on CPU")
    g.add_argument("--attention", default="auto", choices=["auto", "varlen", "masked"],
                   help="how attention reads the KV store: varlen (each row its own length; FlashAttention on "
                        "CUDA, a slow reference on the CPU), masked (one SDPA call over the longest row), "
                        "auto (varlen on CUDA when its kernel passes the start-up check, else masked)")
    g.add_argument("--no-attention-choice", dest="attention_choice", action="store_false",
                   help="with the variable-length attention, use it for every decode step instead of taking, per "
                        "step, the cheaper of it and one masked call (timed at start-up)")
    g.add_argument("--kv-cache-dtype", default="auto", choices=["auto", *STORE_DTYPES],
                   help="what the KV store keeps: auto (the model's dtype) or fp8 (8-bit e4m3: half the memory, "
                        "so twice the tokens, and half the decode attention's reads, at e4m3's precision; attention "
                        "through Triton kernels, so CUDA with Triton, or --attention varlen on the CPU)")
    g.add_argument("--max-prefill-tokens", type=int, default=2048, metavar="N",
                   help="prompt tokens prefilled per engine step (the chunked-prefill budget; a longer prompt "
                        "is split across steps): larger fills the device better during a burst of arrivals, "
                        "smaller lets running streams wait less for each step")
    g.add_argument("--no-prefill-graphs", dest="prefill_graphs", action="store_false",
                   help="with the variable-length attention, prefill unpadded and eagerly instead of in static "
                        "shapes captured as CUDA graphs")


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
    if args.max_prefill_tokens < 16:
        raise ConfigError("--max-prefill-tokens must be at least 16")
    if (conflict := kv_store_conflict(args.kv_cache_dtype, args.attention)) is not None:
        raise ConfigError(conflict)
    return TransformersOptions(model=args.model, device=args.device, dtype=args.dtype,
                               max_model_len=args.max_model_len, kv_cache_tokens=args.kv_cache_tokens,
                               attention=args.attention, attention_choice=args.attention_choice,
                               prefill_graphs=args.prefill_graphs, kv_cache_dtype=args.kv_cache_dtype,
                               max_prefill_tokens=args.max_prefill_tokens)


def _build(options: TransformersOptions, config) -> TransformersEngine:
    return TransformersEngine(options.model, device=options.device, dtype=options.dtype,
                              max_batch=config.max_batch, max_queue=config.max_queue,
                              max_model_len=options.max_model_len, kv_cache_tokens=options.kv_cache_tokens,
                              model_version=config.model_version, attention=options.attention,
                              attention_choice=options.attention_choice, prefill_graphs=options.prefill_graphs,
                              kv_cache_dtype=options.kv_cache_dtype, max_prefill_tokens=options.max_prefill_tokens)


register(EnginePlugin(
    name="transformers", help="run a local model in-process with continuous batching",
    add_arguments=_add_arguments, options_from_args=_options_from_args, build=_build,
    model_names=lambda o: [Path(o.model).name],
    # on a GPU the engine's thread launches a step every few milliseconds and the HTTP side
    # formats a chunk per stream per step: one GIL between them cost 5-18 % of the tokens/s
    # (docs/benchmarks.md); on the CPU the forward itself is the bottleneck
    own_process=lambda o: _pick_device(o.device).type == "cuda"))
