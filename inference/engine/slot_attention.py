"""Attention that reads only each sequence's live tokens out of the slot store.

Why: with one dense SDPA call a decode step reads every row up to the batch's longest row
(rounded up to a width bucket), and a packed prefill step gathers every chunk's keys into
one row and masks a square of ``tokens × keys``. For the DeepSeek-LLM-7B shape a token's
keys and values are 480 KiB, so at 256 rows of mixed lengths the padding alone is several
gigabytes of reads per step. FlashAttention's variable-length kernel, which PyTorch ships as
``aten::_flash_attention_forward``, walks each sequence's own keys: ``cu_seq_k`` gives where
a sequence's keys start in the flat ``[slots × columns, heads, dim]`` store (its slot's first
column) and ``seqused_k`` how many of them it uses (its length). No mask is built, no key is
gathered or copied, and a row reads its own length, not the longest one.

How it plugs in: the model's attention implementation is switched to ``seekwatch_slots``
(registered with transformers' ``AttentionInterface``). A forward that passes a
:class:`SlotAttention` (keyword ``slot_attention``, which transformers hands down to every
attention call) runs the kernel over the store; any other forward (a plain forward at
start-up) runs transformers' own SDPA. The store's keys/values for the step are written by
the cache's ``update`` before the kernel reads them.

Kernels: on CUDA, PyTorch's FlashAttention (bf16/fp16, head dim up to 256); anywhere,
:func:`reference_varlen`, the same contract in plain SDPA, one sequence at a time. The CPU
tests run the engine with the reference, so the bookkeeping (offsets, lengths, causal
alignment) is tested token for token against the masked path; on CUDA the engine checks the
kernel against the reference at start-up and keeps the masked path if they disagree.

Decode kernels read through a page table. A decode step has one query per sequence, and
FlashAttention's plain variable-length kernel tiles queries by 64-128 rows, so for decode a
thread block holds one real query and walks its keys with little memory in flight: on an
H200 it read live keys at about 2.3-2.8 TB/s of the card's 4.8. Both libraries PyTorch
ships have kernels built for decode, reached only through a *paged* key/value cache:
FlashAttention's split-KV kernel (flash decoding: a sequence's keys split across thread
blocks, partial results merged) and cuDNN's paged attention. They take the cache as pages
``[pages, PAGE, heads, dim]`` and a table of each sequence's pages. The slot store is not
paged, but its slots are contiguous, so a page can start at any row: :func:`paged_view`
sees the flat store as overlapping pages (page ``r`` is rows ``r … r+PAGE-1``; the page
stride is one row), and a sequence's ``j``-th page is the row ``slot start + j × PAGE``
(:attr:`SlotKVCache.page_table`, computed once). No copy, no layout change, any slot
width. The store keeps ``PAGE`` spare rows after its last slot so the last page of the last
slot stays inside the allocation. :func:`decode_kernels` lists the candidates for a device;
the engine checks each against the reference at start-up, times them per batch size on the
store and keeps the fastest for each (the log and ``attention_path`` say which).
:func:`reference_paged` reads through the same table in plain SDPA, so the CPU tests check
the table and the view token for token.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

NAME = "seekwatch_slots"

#: Tokens per page for the paged decode kernels: FlashAttention's paged path wants a
#: multiple of 256, cuDNN's a power of two.
PAGE = 256

#: ``kernel(q [Tq, H, D], k [N, Hk, D], v, cu_q [B+1], cu_k [B+1], used_k [B], max_q, max_k,
#: causal, scale, pages=None) -> [Tq, H, D]``. Sequence ``i``'s queries are
#: ``q[cu_q[i]:cu_q[i+1]]``, its keys ``k[cu_k[i] : cu_k[i] + used_k[i]]``; with ``causal``,
#: query ``j`` of ``n`` sees keys up to ``j + used_k[i] - n`` (the queries are the sequence's
#: last tokens). ``pages`` (int32 ``[B, P]``, decode steps only): ``pages[i, j] = cu_k[i] + j ×
#: PAGE``, the same keys as rows of :func:`paged_view` (kernels that do not page ignore it).
#: A kernel with the attribute ``writes_new`` also takes ``new=(k_new, v_new, write)`` on a
#: decode step: the step's own keys and values ``[B, Hk, D]``, not yet in the store, and the
#: flat store row ``write[i]`` (int64) each goes to. It stores them there and attends to them
#: as key ``used_k[i] - 1`` of sequence ``i`` (for a real row the same row; a padding row
#: writes to its slot's trash column and attends to its new key alone). One launch instead of
#: three per layer: the cache's two writes (``index_copy_``) and the attention. A kernel with
#: ``takes_order`` also takes ``order`` (a permutation of the ``B`` sequences) and launches
#: their programs in that order; the output does not depend on it.
Kernel = Callable[..., torch.Tensor]


def paged_view(flat: torch.Tensor) -> torch.Tensor:
    """``flat`` ``[N, Hk, D]`` as ``N`` overlapping pages ``[N, PAGE, Hk, D]``: page ``r`` is
    rows ``r … r+PAGE-1`` (a view; its storage must hold ``PAGE - 1`` rows past ``N``)."""
    n, heads, dim = flat.shape
    row = heads * dim
    return flat.as_strided((n, PAGE, heads, dim), (row, row, dim, 1), flat.storage_offset())


def flash_varlen(q, k, v, cu_q, cu_k, used_k, max_q: int, max_k: int, causal: bool, scale: float,
                 pages=None) -> torch.Tensor:
    """PyTorch's FlashAttention, variable-length form with ``seqused_k`` (CUDA only)."""
    out = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False, scale=scale, seqused_k=used_k)
    return out[0]


def _reference(q, k, v, cu_q, cu_k, used_k, causal: bool, scale: float, pages=None) -> torch.Tensor:
    """SDPA a sequence at a time (offsets read on the host); keys from ``cu_k``, or through
    ``pages`` and :func:`paged_view` where given."""
    out = torch.empty_like(q)
    groups = q.shape[1] // k.shape[1]
    tables = pages.tolist() if pages is not None else None
    kp, vp = (paged_view(k), paged_view(v)) if pages is not None else (None, None)
    for i, (q0, q1, k0, n) in enumerate(zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(),
                                            used_k.tolist())):
        if q1 == q0:
            continue
        if tables is None:
            ki, vi = k[k0:k0 + n], v[k0:k0 + n]
        else:
            idx = torch.tensor(tables[i][:-(-n // PAGE)], dtype=torch.long, device=q.device)
            ki, vi = kp[idx].flatten(0, 1)[:n], vp[idx].flatten(0, 1)[:n]
        ki, vi = ki.to(q.dtype), vi.to(q.dtype)  # an 8-bit store is widened to the query's dtype
        qi = q[q0:q1].transpose(0, 1)                               # [H, n_q, D]
        ki = ki.transpose(0, 1).repeat_interleave(groups, 0)        # [H, n_k, D]
        vi = vi.transpose(0, 1).repeat_interleave(groups, 0)
        mask = None
        if causal:
            rows = torch.arange(q1 - q0, device=q.device).unsqueeze(1)
            mask = torch.arange(n, device=q.device).unsqueeze(0) <= rows + (n - (q1 - q0))
        out[q0:q1] = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=scale).transpose(0, 1)
    return out


def reference_varlen(q, k, v, cu_q, cu_k, used_k, max_q: int, max_k: int, causal: bool, scale: float,
                     pages=None) -> torch.Tensor:
    """The kernel's contract in plain SDPA, a sequence at a time (reads offsets on the host):
    sequence ``i``'s keys from ``cu_k[i]``."""
    return _reference(q, k, v, cu_q, cu_k, used_k, causal, scale)


def reference_paged(q, k, v, cu_q, cu_k, used_k, max_q: int, max_k: int, causal: bool, scale: float,
                    pages=None) -> torch.Tensor:
    """:func:`reference_varlen` reading a decode step's keys through ``pages`` and
    :func:`paged_view`, as the paged kernels do (the CPU tests' check of both)."""
    return _reference(q, k, v, cu_q, cu_k, used_k, causal, scale, pages)


def _labelled(fn: Kernel, label: str) -> Kernel:
    fn.label = label
    return fn


def flash_paged(num_splits: int | None = None) -> Kernel:
    """FlashAttention's split-KV kernel over :func:`paged_view` pages, for decode steps only
    (``num_splits``: key ranges per sequence; None lets FlashAttention choose by batch and
    length)."""

    def kernel(q, k, v, cu_q, cu_k, used_k, max_q, max_k, causal, scale, pages=None):
        if pages is None:
            raise ValueError("FlashAttention's paged kernel serves decode steps (a page table) only")
        return torch.ops.aten._flash_attention_forward(
            q, paged_view(k), paged_view(v), cu_q, cu_k, max_q, max_k, 0.0, causal, False, scale=scale,
            seqused_k=used_k, block_table=pages, num_splits=num_splits)[0]

    return _labelled(kernel, "FlashAttention split-KV (paged" + (f", {num_splits} splits)" if num_splits else ")"))


def cudnn_paged(q, k, v, cu_q, cu_k, used_k, max_q: int, max_k: int, causal: bool, scale: float,
                pages=None) -> torch.Tensor:
    """cuDNN's paged attention over :func:`paged_view` pages (decode steps only)."""
    if pages is None:
        raise ValueError("cuDNN's paged kernel serves decode steps (a page table) only")
    return torch.ops.aten._cudnn_attention_forward(
        q, paged_view(k), paged_view(v), None, cu_q, cu_k, max_q, max_k, False, 0.0, causal, False,
        scale=scale, seqused_k=used_k, block_table=pages)[0]


def cudnn_varlen(q, k, v, cu_q, cu_k, used_k, max_q: int, max_k: int, causal: bool, scale: float,
                 pages=None) -> torch.Tensor:
    """cuDNN's variable-length attention: sequence ``i``'s keys start at ``cu_k[i]`` (ragged
    offsets) and ``used_k[i]`` of them are read."""
    return torch.ops.aten._cudnn_attention_forward(
        q, k, v, None, cu_q, cu_k, max_q, max_k, False, 0.0, causal, False, scale=scale, seqused_k=used_k)[0]


_labelled(flash_varlen, "FlashAttention (variable length)")
_labelled(reference_varlen, "reference (SDPA per sequence)")
_labelled(reference_paged, "reference through the page table (SDPA per sequence)")
_labelled(cudnn_paged, "cuDNN (paged)")
_labelled(cudnn_varlen, "cuDNN (variable length)")


def _has_argument(op, name: str) -> bool:
    return any(a.name == name for a in op.default._schema.arguments)


def decode_kernels(device: torch.device, dtype: torch.dtype, heads: int | None = None,
                   kv_heads: int | None = None, store_dtype: torch.dtype | None = None) -> list[Kernel]:
    """Decode kernels worth timing against the variable-length kernel on ``device``: those
    this PyTorch build has (FlashAttention's paged path needs ``block_table``; cuDNN's needs
    ``seqused_k`` and ``block_table``, cuDNN 9.24 or later on an SM90/SM100 card and decode
    not disabled, PyTorch's own rules for it), and the Triton decode kernel
    (:mod:`inference.engine.triton_decode`, whole groups of query heads per key/value head)
    in a few tile sizes. Over an 8-bit store (``store_dtype`` not ``dtype``) only the Triton
    kernel, which widens on load: the library kernels read the query's dtype only.
    Each is checked against the reference at start-up; one that fails or raises is left out."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return []
    kernels = []
    if heads is not None and kv_heads and heads % kv_heads == 0:
        try:
            from inference.engine import triton_decode
        except ImportError:  # a torch without Triton: the other kernels still serve
            pass
        else:
            kernels += triton_decode.kernels(heads // kv_heads)
    if store_dtype not in (None, dtype):
        return kernels
    if _has_argument(torch.ops.aten._flash_attention_forward, "block_table"):
        kernels += [flash_paged(), flash_paged(1), flash_paged(4)]
    cudnn = torch.ops.aten._cudnn_attention_forward
    disabled = getattr(torch._C, "_is_cudnn_attention_decode_disabled", lambda: False)
    if (_has_argument(cudnn, "block_table") and (torch.backends.cudnn.version() or 0) >= 92400
            and torch.cuda.get_device_capability(device)[0] in (9, 10) and not disabled()):
        kernels += [cudnn_paged, cudnn_varlen]
    return kernels


@dataclass
class SlotAttention:
    """One forward's variable-length description (device tensors; int32 where the kernel asks)."""

    kernel: Kernel
    keys: list[torch.Tensor]     # per layer, the store's keys as [slots × columns, kv_heads, dim]
    values: list[torch.Tensor]
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    used_k: torch.Tensor
    max_q: int
    max_k: int
    causal: bool
    pages: torch.Tensor | None = None  # decode steps: each row's page table (see ``Kernel``)
    #: decode steps whose cache left the writes to the attention: each row's flat store row
    #: for its new key/value (see ``Kernel``'s ``new``)
    write: torch.Tensor | None = None
    #: decode steps: a permutation of the rows, longest first, for kernels with ``takes_order``
    #: (their programs are launched in that order, so the launch does not end on a long row
    #: while most of the card is done); the same output in any order
    order: torch.Tensor | None = None


def write_new(keys: torch.Tensor, values: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
              write: torch.Tensor) -> None:
    """The new keys/values ``[B, Hk, D]`` into the flat store at rows ``write``: what a kernel
    without ``writes_new`` needs done before it reads."""
    keys.index_copy_(0, write, k_new.to(keys.dtype))
    values.index_copy_(0, write, v_new.to(values.dtype))


def slot_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                           slot_attention: SlotAttention | None = None, **kwargs):
    """transformers attention function: ``query`` ``[B, H, q, D]``; returns ``[B, q, H, D]``."""
    if slot_attention is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    s = slot_attention
    b, h, n, d = query.shape
    q = query.transpose(1, 2).reshape(b * n, h, d)
    scale = scaling if scaling is not None else d ** -0.5
    # a decode step (n == 1) whose keys/values are not in the store yet: [B, Hk, 1, D] -> [B, Hk, D]
    new = (key.reshape(b, -1, d), value.reshape(b, -1, d)) if s.write is not None else None
    return attend(s, module.layer_idx, q, scale, new).view(b, n, h, d), None


def attend(s: SlotAttention, layer: int, q: torch.Tensor, scale: float,
           new: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """One layer's attention as :class:`SlotAttention` describes it, ``q`` ``[Tq, H, D]``;
    ``new`` (with ``s.write``): the step's keys and values, written by the kernel where it
    writes them itself (``writes_new``), else into the store first."""
    extra = {"order": s.order} if s.order is not None and getattr(s.kernel, "takes_order", False) else {}
    if new is not None:
        if getattr(s.kernel, "writes_new", False):
            extra["new"] = (*new, s.write)
        else:
            write_new(s.keys[layer], s.values[layer], *new, s.write)
    return s.kernel(q, s.keys[layer], s.values[layer], s.cu_q, s.cu_k, s.used_k, s.max_q, s.max_k, s.causal,
                    scale, pages=s.pages, **extra)


def register() -> str:
    """Register the attention function with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, slot_attention_forward)
    return NAME


def use_on(model) -> None:
    """Switch a loaded model's attention to :data:`NAME`."""
    register()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(NAME)
    else:  # pragma: no cover - older transformers
        model.config._attn_implementation = NAME


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest absolute difference over the largest magnitude of ``want``: how the engine's
    start-up checks (kernel, slot store, graph replays) compare two results."""
    got, want = got.float(), want.float()
    return float((got - want).abs().max() / want.abs().max().clamp(min=1e-6))


def check_kernel(kernel: Kernel, device: torch.device, dtype: torch.dtype, heads: int, kv_heads: int,
                 head_dim: int, decode_only: bool = False, store_dtype: torch.dtype | None = None) -> float:
    """Largest relative difference between ``kernel`` and :func:`reference_varlen` on random
    data shaped like one decode step (keys read through a page table, rows crossing page
    boundaries) and, unless ``decode_only``, one packed prefill step, over a small store laid
    out as the engine's (slots of an odd width, ``PAGE`` spare rows at the end), held in
    ``store_dtype`` (default ``dtype``; the reference widens an 8-bit store as it reads)."""
    g = torch.Generator(device="cpu").manual_seed(2)
    stride, slots = 2 * PAGE + 101, 4
    store = torch.randn(2, slots * stride + PAGE, kv_heads, head_dim, generator=g).to(device, store_dtype or dtype)
    store_k, store_v = store[0, :slots * stride], store[1, :slots * stride]
    i32 = dict(device=device, dtype=torch.int32)
    cases = [  # (query tokens per sequence, slots, keys used, causal)
        ([1, 1, 1, 1], [0, 1, 2, 3], [7, PAGE + 44, 1, stride - 1], False),
        ([5, 12, 3], [2, 0, 3], [5, 30, 20], True),
    ]
    worst = 0.0
    for nq, slot, used, causal in cases[:1] if decode_only else cases:
        q = torch.randn(sum(nq), heads, head_dim, generator=g).to(device, dtype)
        cu_q = torch.tensor([0, *torch.tensor(nq).cumsum(0).tolist()], **i32)
        cu_k = torch.tensor([s * stride for s in slot] + [slots * stride], **i32)
        used_k = torch.tensor(used, **i32)
        pages = None
        if not causal:
            pages = torch.tensor([[s * stride + j * PAGE for j in range(-(-stride // PAGE))] for s in slot], **i32)
        args = (q, store_k, store_v, cu_q, cu_k, used_k, max(nq), stride, causal, head_dim ** -0.5)
        worst = max(worst, relative_error(kernel(*args, pages=pages), reference_varlen(*args)))
        if not causal and getattr(kernel, "writes_new", False) and store_dtype in (None, dtype):
            worst = max(worst, _check_new(kernel, store, args, pages, g))
    return worst


def _check_new(kernel: Kernel, store: torch.Tensor, args: tuple, pages, g: torch.Generator) -> float:
    """A decode step whose new keys/values the kernel writes itself (``new``), its rows
    launched in reverse (``order``, where it takes one), against the same keys written first
    and the reference; the stores after both must agree too. The last row stands for a
    padding row: it writes to another slot's trash row and reads one key."""
    q, store_k, store_v, cu_q, cu_k, used_k, max_q, max_k, causal, scale = args
    rows, (kv_heads, dim) = len(used_k), store_k.shape[1:]
    device = store.device
    k_new, v_new = (torch.randn(rows, kv_heads, dim, generator=g).to(device, store.dtype) for _ in range(2))
    used = used_k.clone()
    used[-1] = 1
    write = (cu_k[:-1] + used - 1).long()
    write[-1] = cu_k[0].long() + max_k - 1  # the first slot's last row, which no row reads
    mine, theirs = store.clone(), store.clone()
    n = store_k.shape[0]
    write_new(theirs[0, :n], theirs[1, :n], k_new, v_new, write)
    step = (q, mine[0, :n], mine[1, :n], cu_q, cu_k, used, max_q, max_k, causal, scale)
    extra = {"order": torch.arange(rows - 1, -1, -1, device=device, dtype=torch.int32)} \
        if getattr(kernel, "takes_order", False) else {}  # launched in another order too
    got = kernel(*step, pages=pages, new=(k_new, v_new, write), **extra)
    want = reference_varlen(q, theirs[0, :n], theirs[1, :n], cu_q, cu_k, used, max_q, max_k, causal, scale)
    # the padding row's answer: its own new key alone, so its value
    want[-1] = v_new[-1].repeat_interleave(q.shape[1] // kv_heads, 0).to(want.dtype)
    return max(relative_error(got, want), relative_error(mine, theirs))


def kernel_for(device: torch.device, dtype: torch.dtype,
               store_dtype: torch.dtype | None = None) -> tuple[Kernel | None, str]:
    """The fast kernel for ``device``/``dtype`` over a store of ``store_dtype`` (default
    ``dtype``), or None and why not: FlashAttention over a store of the model's dtype, the
    Triton kernel (:mod:`inference.engine.triton_prefill`) over an 8-bit one."""
    eight_bit = store_dtype not in (None, dtype)
    name = "the Triton attention kernel" if eight_bit else "FlashAttention"
    if device.type != "cuda":
        return None, f"{name} needs a CUDA device"
    if dtype not in (torch.bfloat16, torch.float16):
        return None, f"{name} needs bf16 or fp16, not {dtype}"
    if eight_bit:
        try:
            from inference.engine import triton_prefill
        except ImportError:
            return None, "an 8-bit KV store needs Triton"
        return triton_prefill.make_kernel(), "Triton attention (variable length, 8-bit KV store)"
    return flash_varlen, "FlashAttention (variable length)"


#: graph replays per timing on CUDA (see :func:`time_call`)
REPLAYS = 10


def _captured(fn):
    """``fn`` captured as a CUDA graph (warmed up on a side stream first, as capture wants),
    or None when it cannot be captured."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph
    except Exception:  # noqa: BLE001 - timed eagerly instead
        torch.cuda.synchronize()
        return None


def time_call(fn, device: torch.device, repeat: int = 5, graph: bool = True) -> float:
    """Median milliseconds of one call of ``fn`` (device events on CUDA), after one call to
    warm it: how the engine times the attention kernels at start-up, and the probe times them too.

    On CUDA (``graph``) ``fn`` is captured as a CUDA graph and each timing covers
    :data:`REPLAYS` replays back to back, divided: the device's own time per call, as the
    engine's captured decode steps run it. One eager call between two events also counted the
    host's launch, during which the device waits: tens of microseconds for a Triton kernel's
    launcher in Python, less for a library kernel's, more than a small batch's attention
    itself, and none of it paid in a replayed step. ``graph=False``, or a call that cannot be
    captured: one eager call per timing, as before."""
    captured = _captured(fn) if graph and device.type == "cuda" else None  # warms it on a side stream
    if captured is None:
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            if captured is not None:
                for _ in range(REPLAYS):
                    captured.replay()
            else:
                fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / (REPLAYS if captured is not None else 1))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]
