"""Variable-length causal attention over the slot store as a Triton kernel: prefill steps
(and any other) over an 8-bit key/value store.

Why: with ``--kv-cache-dtype fp8`` the store holds keys and values as 8-bit floats
(``float8_e4m3fn``), which halves what a decode step reads, but neither FlashAttention nor
cuDNN as PyTorch ships them reads 8-bit keys. Decode steps have the Triton decode kernel
(:mod:`inference.engine.triton_decode`, which widens on load); this module is the same for
steps with many queries per sequence: a flash-attention forward (one program per tile of
``BLOCK_M`` queries of one sequence and one head, an online softmax in fp32 over tiles of
``BLOCK_N`` keys) whose key and value tiles are widened to the query's dtype as they are
loaded, so the matrix units see bf16 and the store stays 8-bit. Over a bf16 store it runs
too (the widening is then a no-op); the engine uses it only with the 8-bit store, where
FlashAttention cannot serve.

Same contract as the other kernels (``slot_attention.Kernel``): sequence ``i``'s queries are
``q[cu_q[i]:cu_q[i+1]]``, its keys ``k[cu_k[i] : cu_k[i] + used_k[i]]``; with ``causal``,
query ``j`` of ``n`` sees keys up to ``j + used_k[i] - n``. The grid is sized by ``max_q``
and the number of sequences (both static in a captured prefill step); programs past a
sequence's queries return at once. On the CPU it runs under Triton's interpreter, which is
how the tests check it against the reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _attention(Q, K, V, OUT, CU_Q, CU_K, USED, scale, stride_qt, stride_qh, stride_kn, stride_kh,
               stride_ot, stride_oh, CAUSAL: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, D: tl.constexpr):
    tile = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    q0 = tl.load(CU_Q + b)
    nq = tl.load(CU_Q + b + 1) - q0
    if tile * BLOCK_M < nq:
        used = tl.load(USED + b)
        base = tl.load(CU_K + b).to(tl.int64)
        kvh = h // GROUP
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D)
        real = offs_m < nq
        q = tl.load(Q + (q0 + offs_m)[:, None].to(tl.int64) * stride_qt + h * stride_qh + offs_d[None, :],
                    mask=real[:, None], other=0.0)
        if CAUSAL:  # the tile's last query sees keys up to its own position
            hi = tl.minimum(used, (tile + 1) * BLOCK_M + used - nq)
        else:
            hi = used
        m = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        for n0 in range(0, hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            live = offs_n < hi
            rows = (base + offs_n)[:, None] * stride_kn + kvh * stride_kh + offs_d[None, :]
            k = tl.load(K + rows, mask=live[:, None], other=0.0).to(q.dtype)
            v = tl.load(V + rows, mask=live[:, None], other=0.0).to(q.dtype)
            scores = tl.dot(q, tl.trans(k)) * scale
            visible = live[None, :]
            if CAUSAL:
                visible = visible & (offs_n[None, :] <= offs_m[:, None] + (used - nq))
            scores = tl.where(visible, scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=1))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(scores - m_new[:, None])
            l = l * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m = m_new
        out = acc / l[:, None]
        tl.store(OUT + (q0 + offs_m)[:, None].to(tl.int64) * stride_ot + h * stride_oh + offs_d[None, :],
                 out.to(OUT.dtype.element_ty), mask=real[:, None])


def make_kernel(block_m: int = 64, block_n: int = 64, num_warps: int = 4, num_stages: int = 2):
    """A ``slot_attention.Kernel`` for any step (prefill or decode) over a store of any float dtype."""

    def triton_prefill(q, k, v, cu_q, cu_k, used_k, max_q: int, max_k: int, causal: bool, scale: float,
                       pages=None) -> torch.Tensor:
        tokens, heads, dim = q.shape
        if heads % k.shape[1]:
            raise ValueError(f"the Triton attention kernel needs whole groups of query heads per key/value head, "
                             f"not {heads} over {k.shape[1]}")
        out = torch.empty_like(q)
        seqs = cu_q.shape[0] - 1
        grid = (triton.cdiv(max(max_q, 1), block_m), seqs, heads)
        _attention[grid](q, k, v, out, cu_q, cu_k, used_k, scale * LOG2E, q.stride(0), q.stride(1),
                         k.stride(0), k.stride(1), out.stride(0), out.stride(1), CAUSAL=causal,
                         GROUP=heads // k.shape[1], BLOCK_M=block_m, BLOCK_N=block_n, D=dim,
                         num_warps=num_warps, num_stages=num_stages)
        return out

    triton_prefill.label = f"Triton attention ({block_m}-query, {block_n}-key tiles)"
    return triton_prefill
