"""Decode attention over the slot store as a Triton kernel.

Why: on the PyTorch builds without paged decode kernels (see :mod:`inference.engine.slot_attention`),
a decode step's attention is FlashAttention's variable-length kernel, which tiles queries by
64-128 rows while a decode step has one per sequence; on an H200 it read live keys at about
half the card's bandwidth. This kernel is written for one query: each program takes one
sequence, one head and one range of its keys (enough ranges per sequence to fill the card),
loads the range's keys and values a tile at a time (both loads issued before any arithmetic,
so two tiles are in flight per program) and keeps an online softmax in fp32; a second kernel
merges the ranges (where a row has more than one: from a few dozen rows up, one program per
sequence and head fills the card, and the programs write the output themselves). The query
is a vector, so the scores are a multiply and a row sum, no matrix unit and no padded query
rows. A second form (``mma=True``) repeats the query on 16 rows, the smallest matrix the
matrix units take, so that scores and values are matrix multiplies instead of sums across a
warp's lanes: more arithmetic, all of it on units that are otherwise idle in a decode step,
and faster from about 128 rows up on an H200.

Grouped-query models (the R1-distill Qwen and Llama layouts: 7 or 4 query heads per
key/value head) run the same program per query head, reading its group's keys and values;
the heads of one group are launched next to each other, so their reads of the same keys
meet in the card's L2 cache rather than in its memory.

Same contract as the other kernels (``slot_attention.Kernel``) for decode steps (``max_q ==
1``, not causal): sequence ``i`` reads ``k[cu_k[i] : cu_k[i] + used_k[i]]``. The engine times
it beside the others at start-up and keeps it only for the batch sizes where it is fastest.
On the CPU it runs under Triton's interpreter (``TRITON_INTERPRET=1``, set before this module
is imported), which is how the tests check it against the reference.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _program(CU_K, USED, ORDER, S, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, HEADS_FIRST: tl.constexpr,
             ORDERED: tl.constexpr):
    """This program's sequence, head, key range ``[start, end)`` and the sequence's first
    row in the store: the part ``_partial`` and ``_partial_mma`` share. ``ORDERED``: the
    sequences are launched in the order ``ORDER`` lists them (longest first)."""
    if HEADS_FIRST:  # heads vary fastest: a sequence's heads run together (see ``make_kernel``)
        h = tl.program_id(0)
        b = tl.program_id(1)
    else:
        b = tl.program_id(0)
        h = tl.program_id(1)
    if ORDERED:
        b = tl.load(ORDER + b).to(tl.int32)
    s = tl.program_id(2)
    used = tl.load(USED + b)
    base = tl.load(CU_K + b).to(tl.int64)
    if CHUNK > 0:  # ranges of a fixed length: a long row gets more programs than a short one
        per = CHUNK
    else:  # every row split into S equal ranges
        per = tl.cdiv(tl.cdiv(used, S), BLOCK_N) * BLOCK_N
    start = s * per
    end = tl.minimum(start + per, used)
    return b, h, s, base, start, end


@triton.jit
def _last_key(USED, b, start, end):
    """With ``new``: whether this program's key range ``[start, end)`` holds row ``b``'s last
    position (the step's own key, taken from ``KN`` rather than read from the store), and
    the end of what it reads from the store."""
    last = tl.load(USED + b) - 1
    return (start <= last) & (last < end), tl.minimum(end, last)


@triton.jit
def _new_key(K, V, KN, VN, WRITE, b, kvh, offs_d, stride_kn, stride_kh, stride_knb, stride_knh, stride_vnb,
             stride_vnh, write):
    """Row ``b``'s new key and value for head ``kvh`` (the step's own token), stored into the
    store at its write row by the one program told to (``write``)."""
    kn = tl.load(KN + b * stride_knb + kvh * stride_knh + offs_d)
    vn = tl.load(VN + b * stride_vnb + kvh * stride_vnh + offs_d)
    at = tl.load(WRITE + b) * stride_kn + kvh * stride_kh + offs_d
    # the scalar flag widened to the vector's shape as integers: Triton's interpreter refuses
    # a scalar boolean broadcast into a store mask
    live = tl.full(offs_d.shape, 0, tl.int32) + write.to(tl.int32) > 0
    tl.store(K + at, kn.to(K.dtype.element_ty), mask=live)
    tl.store(V + at, vn.to(V.dtype.element_ty), mask=live)
    return kn, vn


@triton.jit
def _fold(m, l, score, fold):
    """The online softmax's running maximum ``m`` and sum ``l`` after one more key of ``score``
    (none where ``fold`` is false); returns them with the factor the accumulator is scaled by
    and the key's weight. An empty range (``m`` still -inf) that folds nothing stays empty."""
    m_new = tl.maximum(m, tl.where(fold, score, float("-inf")))
    alpha = tl.where(m_new == float("-inf"), 1.0, tl.exp2(m - m_new))
    p = tl.where(fold, tl.exp2(score - m_new), 0.0)
    return m_new, l * alpha + p, alpha, p


@triton.jit
def _partial(Q, K, V, CU_K, USED, ORDER, ACC, ML, OUT, KN, VN, WRITE, scale, stride_qb, stride_qh, stride_kn,
             stride_kh, stride_ob, stride_oh, stride_knb, stride_knh, stride_vnb, stride_vnh, H, S,
             BLOCK_N: tl.constexpr, D: tl.constexpr, CHUNK: tl.constexpr, GROUP: tl.constexpr,
             HEADS_FIRST: tl.constexpr, DIRECT: tl.constexpr, NEW: tl.constexpr, ORDERED: tl.constexpr):
    b, h, s, base, start, end = _program(CU_K, USED, ORDER, S, BLOCK_N, CHUNK, HEADS_FIRST, ORDERED)
    kvh = h // GROUP
    offs_d = tl.arange(0, D)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_d).to(tl.float32) * scale
    m = tl.full([1], float("-inf"), tl.float32)
    l = tl.zeros([1], tl.float32)
    acc = tl.zeros([D], tl.float32)
    if NEW:  # the step's own key is the row's last: taken from KN below, not read from the store
        fold, end = _last_key(USED, b, start, end)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        live = offs_n < end
        rows = (base + offs_n)[:, None] * stride_kn + kvh * stride_kh + offs_d[None, :]
        k = tl.load(K + rows, mask=live[:, None], other=0.0)
        v = tl.load(V + rows, mask=live[:, None], other=0.0)
        scores = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
        scores = tl.where(live, scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=0))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(scores - m_new)
        l = l * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
        m = m_new
    if NEW:
        kn, vn = _new_key(K, V, KN, VN, WRITE, b, kvh, offs_d, stride_kn, stride_kh, stride_knb, stride_knh,
                          stride_vnb, stride_vnh, fold & (h % GROUP == 0))
        m, l, alpha, p = _fold(m, l, tl.sum(kn.to(tl.float32) * q, axis=0), fold)
        acc = acc * alpha + p * vn.to(tl.float32)
    if DIRECT:  # one range per row: the output itself, as ``_merge`` would make it of one range
        tl.store(OUT + b * stride_ob + h * stride_oh + offs_d, (acc / l).to(OUT.dtype.element_ty))
    else:
        out = (b * H + h) * S + s
        tl.store(ACC + out * D + offs_d, acc)
        tl.store(ML + out * 2 + tl.arange(0, 1), m)
        tl.store(ML + out * 2 + 1 + tl.arange(0, 1), l)


@triton.jit
def _partial_mma(Q, K, V, CU_K, USED, ORDER, ACC, ML, OUT, KN, VN, WRITE, scale, stride_qb, stride_qh, stride_kn,
                 stride_kh, stride_ob, stride_oh, stride_knb, stride_knh, stride_vnb, stride_vnh, H, S,
                 BLOCK_N: tl.constexpr, D: tl.constexpr, CHUNK: tl.constexpr, HEADS_FIRST: tl.constexpr,
                 DIRECT: tl.constexpr, NEW: tl.constexpr, ORDERED: tl.constexpr):
    """``_partial`` on the matrix units, for one key/value head per query head: the query is
    repeated on 16 rows (a matrix multiply needs 16), so scores and the weighted sum of values
    are matrix multiplies rather than row sums across a warp's lanes. Every row computes the
    same thing; row 0 is stored. The probabilities meet the values in the query's dtype, as
    in FlashAttention."""
    b, h, s, base, start, end = _program(CU_K, USED, ORDER, S, BLOCK_N, CHUNK, HEADS_FIRST, ORDERED)
    offs_m = tl.arange(0, 16)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * 0 + offs_d[None, :])
    m = tl.full([16], float("-inf"), tl.float32)
    l = tl.zeros([16], tl.float32)
    acc = tl.zeros([16, D], tl.float32)
    if NEW:  # as in ``_partial``
        fold, end = _last_key(USED, b, start, end)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        live = offs_n < end
        rows = (base + offs_n)[:, None] * stride_kn + h * stride_kh + offs_d[None, :]
        k = tl.load(K + rows, mask=live[:, None], other=0.0).to(q.dtype)
        v = tl.load(V + rows, mask=live[:, None], other=0.0).to(q.dtype)
        scores = tl.dot(q, tl.trans(k)) * scale
        scores = tl.where(live[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v)
        m = m_new
    if NEW:
        kn, vn = _new_key(K, V, KN, VN, WRITE, b, h, offs_d, stride_kn, stride_kh, stride_knb, stride_knh,
                          stride_vnb, stride_vnh, fold)
        score = tl.sum(q.to(tl.float32) * kn.to(tl.float32)[None, :], axis=1) * scale
        m, l, alpha, p = _fold(m, l, score, fold)
        # the probabilities meet the value in the query's dtype, as the tiles' do
        acc = acc * alpha[:, None] + p.to(q.dtype).to(tl.float32)[:, None] * vn.to(tl.float32)[None, :]
    first = offs_m == 0
    if DIRECT:
        tl.store(OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * 0 + offs_d[None, :],
                 (acc / l[:, None]).to(OUT.dtype.element_ty), mask=first[:, None])
    else:
        out = (b * H + h) * S + s
        tl.store(ACC + out * D + offs_m[:, None] * 0 + offs_d[None, :], acc, mask=first[:, None])
        tl.store(ML + out * 2 + offs_m * 0, m, mask=first)
        tl.store(ML + out * 2 + 1 + offs_m * 0, l, mask=first)


@triton.jit
def _merge(ACC, ML, OUT, stride_ob, stride_oh, H, S, BLOCK_S: tl.constexpr, D: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, D)
    real = offs_s < S
    row = (b * H + h) * S + offs_s
    m = tl.load(ML + row * 2, mask=real, other=float("-inf"))
    l = tl.load(ML + row * 2 + 1, mask=real, other=0.0)
    top = tl.max(m, axis=0)
    w = tl.where(real & (m > float("-inf")), tl.exp2(m - top), 0.0)
    acc = tl.load(ACC + row[:, None] * D + offs_d[None, :], mask=real[:, None], other=0.0)
    out = tl.sum(w[:, None] * acc, axis=0) / tl.sum(w * l, axis=0)
    tl.store(OUT + b * stride_ob + h * stride_oh + offs_d, out.to(OUT.dtype.element_ty))


@functools.lru_cache(maxsize=8)
def _programs(device: torch.device) -> int:
    """Programs to aim for per launch: four per multiprocessor (four on the CPU)."""
    if device.type != "cuda":
        return 4
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def splits_for(rows: int, heads: int, max_k: int, block_n: int, programs: int) -> int:
    """Key ranges per sequence: enough programs to fill the card, at most one per tile."""
    want = -(-programs // max(rows * heads, 1))
    return max(1, min(want, -(-max_k // block_n), 64))


def make_kernel(block_n: int = 64, num_warps: int = 4, chunk: int = 0, num_stages: int | None = None,
                mma: bool = False, heads_first: bool = False):
    """A ``slot_attention.Kernel`` for decode steps with this tile of keys and warps per program.

    ``chunk`` (a multiple of ``block_n``) gives every program a key range of that length, so the
    programs of a batch of mixed lengths carry equal work; 0 splits each row into as many equal
    ranges as it takes to fill the card (:func:`splits_for`). ``num_stages`` is Triton's
    software-pipelining depth (its default when None or 0). ``mma``: scores and values through
    the matrix units (``_partial_mma``; one key/value head per query head, tiles of 16 keys or
    more). ``heads_first``: programs are launched with the heads of one sequence next to each
    other (sequences next to each other otherwise). A token's keys for all heads lie together
    in the store (``[slots × columns, kv_heads, dim]``), so heads launched together read one
    contiguous row per token between them instead of 256-byte pieces of many rows. Grouped-query
    models always launch this way, so that a group's heads share its keys in L2.

    With one key range per row (every batch of more than a few rows fills the card with one
    program per sequence and head), the programs write the output themselves and the merge
    kernel is not launched.

    The kernel also takes the step's own keys and values (``new``, see ``slot_attention.Kernel``):
    the program whose key range holds a row's last position stores them there and folds them
    into its softmax from registers, so no program reads a row the step is writing and the
    cache's two writes per layer are not launched. And ``order``: the sequences' programs are
    launched longest first (the engine sorts its rows on the host each step). The card starts
    programs in launch order; in a batch of mixed lengths the last ones to start are then
    short ones, rather than a long row that keeps a few multiprocessors busy after the others
    are done. On an H200 (rows of 64-768 tokens) that took 9 % off the attention at 64 rows, 4 %
    at 128 and 1.4 % at 256; sorting on the device inside the step cost more than it saved.
    """
    if chunk % block_n:
        raise ValueError(f"the key range ({chunk}) must be a multiple of the tile ({block_n})")
    launch = {"num_warps": num_warps} | ({"num_stages": num_stages} if num_stages else {})

    def triton_decode(q, k, v, cu_q, cu_k, used_k, max_q: int, max_k: int, causal: bool, scale: float,
                      pages=None, new=None, order=None) -> torch.Tensor:
        if max_q != 1 or causal:
            raise ValueError("the Triton decode kernel serves decode steps only (one query per sequence)")
        rows, heads, dim = q.shape
        if heads % k.shape[1]:
            raise ValueError(f"the Triton decode kernel needs whole groups of query heads per key/value head, "
                             f"not {heads} over {k.shape[1]}")
        group = heads // k.shape[1]
        if mma and group > 1:
            raise ValueError(f"the matrix-unit decode kernel needs one key/value head per query head, "
                             f"not {heads} over {k.shape[1]}")
        s = -(-max_k // chunk) if chunk else splits_for(rows, heads, max_k, block_n, _programs(q.device))
        direct = s == 1
        out = torch.empty_like(q)
        acc = ml = out  # not written when the programs write the output themselves
        if not direct:
            acc = torch.empty((rows, heads, s, dim), dtype=torch.float32, device=q.device)
            ml = torch.empty((rows, heads, s, 2), dtype=torch.float32, device=q.device)
        kn, vn, write = new if new is not None else (q, q, cu_k)  # not read without ``new``
        if new is not None and (kn.stride(-1) != 1 or vn.stride(-1) != 1 or k.stride(-1) != 1
                                or k.stride() != v.stride() or kn.shape != vn.shape
                                or kn.shape != (rows, k.shape[1], dim)):
            raise ValueError("the new keys/values must be [rows, kv_heads, dim] with unit stride in dim, "
                             "over a store whose keys and values are laid out alike")
        order_at = order if order is not None else cu_k  # not read without ``order``
        args = (q, k, v, cu_k, used_k, order_at, acc, ml, out, kn, vn, write, scale * LOG2E, q.stride(0),
                q.stride(1), k.stride(0), k.stride(1), out.stride(0), out.stride(1), kn.stride(0), kn.stride(1),
                vn.stride(0), vn.stride(1), heads, s)
        first = heads_first or group > 1
        grid = (heads, rows, s) if first else (rows, heads, s)
        flags = {"BLOCK_N": block_n, "D": dim, "CHUNK": chunk, "HEADS_FIRST": first, "DIRECT": direct,
                 "NEW": new is not None, "ORDERED": order is not None}
        if mma:
            _partial_mma[grid](*args, **flags, **launch)
        else:
            _partial[grid](*args, **flags, GROUP=group, **launch)
        if not direct:
            _merge[(rows, heads)](acc, ml, out, out.stride(0), out.stride(1), heads, s,
                                  BLOCK_S=triton.next_power_of_2(s), D=dim)
        return out

    extra = ((f", {chunk}-key ranges" if chunk else "") + (f", {num_stages} stages" if num_stages else "")
             + (", heads first" if heads_first else ""))
    units = "matrix units, " if mma else ""
    triton_decode.label = f"Triton decode ({units}{block_n}-key tiles, {num_warps} warps{extra})"
    triton_decode.writes_new = triton_decode.takes_order = True
    return triton_decode


#: The variants the engine times at start-up (each bucket keeps the fastest kernel): (tile,
#: warps), (tile, warps, key range, pipelining stages) or (…, matrix units, heads first), as
#: ``make_kernel`` takes them (0: no fixed range, Triton's default depth). The matrix-unit
#: ones were the fastest at 32-256 rows in an H200 probe (2026-12-02); offered both launch
#: orders, the engine kept the heads-first ones at every batch from 32 up.
VARIANTS: list[tuple[int, ...]] = [(32, 1), (16, 1), (32, 2), (16, 1, 64),
                                   (32, 1, 0, 0, 1), (32, 2, 0, 0, 1), (64, 4, 0, 0, 1), (16, 1, 64, 0, 1),
                                   (32, 1, 0, 0, 1, 1), (32, 2, 0, 0, 1, 1), (16, 1, 64, 0, 1, 1),
                                   (32, 2, 0, 3, 1, 1)]


def kernels(group: int = 1) -> list:
    """The variants as kernels; with ``group`` query heads per key/value head above 1, those
    off the matrix units only (the matrix-unit kernel takes one key/value head per query head)."""
    return [make_kernel(*v) for v in VARIANTS if group == 1 or len(v) < 5 or not v[4]]
