"""Decode attention over the slot store as a Triton kernel (split-K, "flash decoding").

Why: a decode step has one query per sequence. FlashAttention's variable-length kernel
(what :mod:`inference.engine.slot_attention` uses for prefill) tiles queries by 64-128 rows,
so for decode a thread block holds one real query row and walks its keys with little
memory-level parallelism: on an H200 it read live keys at about 2.3 TB/s, half the card's
bandwidth (``benchmarks/attention_probe.py``), and at 256 rows attention was most of the
decode step. This kernel gives each (sequence, key/value head, key range) its own program:
the program loads its query heads once and streams ``BLOCK_N`` keys and values at a time
with an online softmax; a second kernel merges the ranges. The number of ranges per row is
chosen so that even one sequence fills the card.

Same contract as the other kernels (``slot_attention.Kernel``) for decode steps
(``max_q == 1``, not causal): sequence ``i`` reads ``k[cu_k[i] : cu_k[i] + used_k[i]]``.
Grouped-query heads share their key/value loads (one program per key/value head). On the
CPU it runs under Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests
check it against the reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

#: Programs to aim for per launch: a few per multiprocessor of a large GPU.
TARGET_PROGRAMS = 528
BLOCK_N = 64


@triton.jit
def _partial(Q, K, V, CU_K, USED, ACC, ML, scale, split_len,
             stride_qb, stride_qh, stride_kn, stride_kh, H, S,
             GROUPS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    b = tl.program_id(0)
    hk = tl.program_id(1)
    s = tl.program_id(2)
    used = tl.load(USED + b)
    base = tl.load(CU_K + b).to(tl.int64)
    start = s * split_len
    end = tl.minimum(start + split_len, used)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, D)
    heads = hk * GROUPS + offs_g
    gmask = offs_g < GROUPS
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=gmask[:, None], other=0.0)
    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < end
        rows = (base + offs_n)[:, None] * stride_kn + hk * stride_kh + offs_d[None, :]
        k = tl.load(K + rows, mask=nmask[:, None], other=0.0)
        if BLOCK_G >= 16:
            scores = tl.dot(q, tl.trans(k)).to(tl.float32)
        else:
            scores = tl.sum(q[:, None, :].to(tl.float32) * k[None, :, :].to(tl.float32), axis=2)
        scores = tl.where(nmask[None, :], scores * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(scores - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        v = tl.load(V + rows, mask=nmask[:, None], other=0.0)
        if BLOCK_G >= 16:
            pv = tl.dot(p.to(v.dtype), v).to(tl.float32)
        else:
            pv = tl.sum(p[:, :, None] * v[None, :, :].to(tl.float32), axis=1)
        acc = acc * alpha[:, None] + pv
        m = m_new
    out = (b * H + heads) * S + s
    tl.store(ACC + out[:, None] * D + offs_d[None, :], acc, mask=gmask[:, None])
    tl.store(ML + out * 2, m, mask=gmask)
    tl.store(ML + out * 2 + 1, l, mask=gmask)


@triton.jit
def _merge(ACC, ML, OUT, H, S, BLOCK_S: tl.constexpr, D: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, D)
    smask = offs_s < S
    row = (b * H + h) * S + offs_s
    m = tl.load(ML + row * 2, mask=smask, other=float("-inf"))
    l = tl.load(ML + row * 2 + 1, mask=smask, other=0.0)
    top = tl.max(m, axis=0)
    w = tl.where(smask & (m > float("-inf")), tl.exp(m - top), 0.0)
    acc = tl.load(ACC + row[:, None] * D + offs_d[None, :], mask=smask[:, None], other=0.0)
    out = tl.sum(w[:, None] * acc, axis=0) / tl.sum(w * l, axis=0)
    tl.store(OUT + (b * H + h) * D + offs_d, out.to(OUT.dtype.element_ty))


def splits_for(rows: int, kv_heads: int, max_k: int, block_n: int = BLOCK_N) -> int:
    """Key ranges per sequence: enough programs to fill the card, each at least one block."""
    want = -(-TARGET_PROGRAMS // max(rows * kv_heads, 1))
    return max(1, min(want, -(-max_k // block_n)))


def make_decode_kernel(block_n: int = BLOCK_N, num_warps: int = 4):
    """A ``slot_attention.Kernel`` for decode steps (one query per sequence) with this tile
    of keys and this many warps per program (the engine times a few and keeps the fastest)."""

    def triton_decode(q, k, v, cu_q, cu_k, used_k, max_q: int, max_k: int, causal: bool, scale: float) -> torch.Tensor:
        if max_q != 1 or causal:
            raise ValueError("the Triton decode kernel serves decode steps only (one query per sequence)")
        rows, heads, dim = q.shape
        kv_heads = k.shape[1]
        groups = heads // kv_heads
        block_g = 1 if groups == 1 else max(16, triton.next_power_of_2(groups))
        s = splits_for(rows, kv_heads, max_k, block_n)
        split_len = -(-max_k // s)
        split_len = -(-split_len // block_n) * block_n
        acc = torch.empty((rows, heads, s, dim), dtype=torch.float32, device=q.device)
        ml = torch.empty((rows, heads, s, 2), dtype=torch.float32, device=q.device)
        _partial[(rows, kv_heads, s)](q, k, v, cu_k, used_k, acc, ml, scale, split_len,
                                      q.stride(0), q.stride(1), k.stride(0), k.stride(1), heads, s,
                                      GROUPS=groups, BLOCK_G=block_g, BLOCK_N=block_n, D=dim, num_warps=num_warps)
        out = torch.empty_like(q)
        _merge[(rows, heads)](acc, ml, out, heads, s, BLOCK_S=triton.next_power_of_2(s), D=dim)
        return out

    triton_decode.label = f"Triton split-K decode ({block_n}-key tiles, {num_warps} warps)"
    return triton_decode


#: The variants the engine times at start-up.
VARIANTS = [make_decode_kernel(32, 4), make_decode_kernel(64, 4), make_decode_kernel(128, 8)]
triton_decode = VARIANTS[1]
