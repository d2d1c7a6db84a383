"""Rotary position embedding of queries and keys as one kernel instead of about ten.

Why: transformers' ``apply_rotary_pos_emb`` (Llama, Qwen2, Mistral and their copies) computes
``q * cos + rotate_half(q) * sin`` and the same for ``k`` in elementwise steps: two slices,
a negation and a concatenation for ``rotate_half``, two products and a sum, for each of
``q`` and ``k``. That is ten kernels per layer, about 300 per decode step of a 30-layer
model, each moving a few kilobytes. Inside a CUDA graph a launch costs a few microseconds,
and at one stream a decode step is only a few milliseconds of weight reads: the launches are
a visible share of the step (a replay of 6.0 ms against 3.3 ms of weight reads on an H200).
The kernel here reads each token's query and key heads once and writes them rotated.

It rounds where transformers' form rounds: each product is rounded to the tensors' dtype
before the sum, as PyTorch's 16-bit elementwise kernels do (they compute in float32 and
round each result), so the two agree bit for bit in bfloat16 and float16 (in float32 up to
the compiler's freedom to fuse a multiply and an add; a first version that rounded through
conversions differed in the last place on an H200, see :mod:`inference.engine.triton_round`). On the CPU it runs
under Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests compare it with
transformers' function.

How it is put in place: the attention forwards call ``apply_rotary_pos_emb`` by its name in
their modeling module, so :func:`fuse_rotary` replaces that name in the modules of the
model's attention classes with :func:`rotary` behind a dispatcher that falls back to the
original for anything the kernel does not take (another layout, mixed dtypes, a CPU tensor
without the interpreter). The name is replaced process-wide, for every model of that class,
which is why the replacement must compute what the original computes: each module is checked
on random inputs first (the same bits, by default) and left alone when they disagree.
"""
from __future__ import annotations

import sys
import types
from typing import Callable

import torch
import triton
import triton.language as tl

from inference.engine.slot_attention import relative_error
from inference.engine.triton_round import round_to, runs_on

#: The function name the modeling modules call.
NAME = "apply_rotary_pos_emb"


@triton.jit
def _rotate(X, O, C1, C2, S1, S2, t_b, t_s, stride_xb, stride_xh, stride_xs, stride_ob, stride_oh, stride_os,
            H, BLOCK_H: tl.constexpr, HALF: tl.constexpr):
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HALF)
    live = (offs_h < H)[:, None]
    x_at = X + t_b * stride_xb + t_s * stride_xs + offs_h[:, None] * stride_xh + offs_d[None, :]
    o_at = O + t_b * stride_ob + t_s * stride_os + offs_h[:, None] * stride_oh + offs_d[None, :]
    x1 = tl.load(x_at, mask=live, other=0.0).to(tl.float32)
    x2 = tl.load(x_at + HALF, mask=live, other=0.0).to(tl.float32)
    dtype = O.dtype.element_ty
    # q * cos + rotate_half(q) * sin, with rotate_half(q) = cat(-x2, x1); each product rounded
    first = round_to(x1 * C1[None, :], dtype) + round_to(-x2 * S1[None, :], dtype)
    second = round_to(x2 * C2[None, :], dtype) + round_to(x1 * S2[None, :], dtype)
    tl.store(o_at, round_to(first, dtype).to(dtype), mask=live)  # already representable: exact
    tl.store(o_at + HALF, round_to(second, dtype).to(dtype), mask=live)


@triton.jit
def _rotary(Q, K, QO, KO, COS, SIN, S, HQ, HK,
            stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
            stride_qob, stride_qoh, stride_qos, stride_kob, stride_koh, stride_kos,
            stride_cb, stride_cs,
            BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, HALF: tl.constexpr):
    t = tl.program_id(0)  # one token: its query heads and its key heads
    t_b = t // S
    t_s = t % S
    offs_d = tl.arange(0, HALF)
    at = t_b * stride_cb + t_s * stride_cs + offs_d
    c1 = tl.load(COS + at).to(tl.float32)
    c2 = tl.load(COS + at + HALF).to(tl.float32)
    s1 = tl.load(SIN + at).to(tl.float32)
    s2 = tl.load(SIN + at + HALF).to(tl.float32)
    _rotate(Q, QO, c1, c2, s1, s2, t_b, t_s, stride_qb, stride_qh, stride_qs, stride_qob, stride_qoh, stride_qos,
            HQ, BLOCK_HQ, HALF)
    _rotate(K, KO, c1, c2, s1, s2, t_b, t_s, stride_kb, stride_kh, stride_ks, stride_kob, stride_koh, stride_kos,
            HK, BLOCK_HK, HALF)


def _like(x: torch.Tensor) -> torch.Tensor:
    """An output laid out as PyTorch's elementwise kernels lay out ``x * cos`` for ``x`` of
    shape ``[batch, heads, seq, dim]`` viewed from ``[batch, seq, heads, dim]``: the same
    order of strides, so later ``transpose``/``reshape`` calls cost what they cost before."""
    b, h, s, d = x.shape
    if x.stride(1) >= x.stride(2) * max(s, 1) or s == 1:  # heads outside the sequence
        return torch.empty((b, h, s, d), dtype=x.dtype, device=x.device)
    return torch.empty((b, s, h, d), dtype=x.dtype, device=x.device).transpose(1, 2)


def supported(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1) -> bool:
    """Whether :func:`rotary` takes these inputs: ``[batch, heads, seq, dim]`` queries and keys
    with unit stride in ``dim`` (an even power of two), ``[batch, seq, dim]`` cos and sin, one
    dtype, on a CUDA device (or any device under Triton's interpreter)."""
    if unsqueeze_dim != 1 or q.dim() != 4 or k.dim() != 4 or cos.dim() != 3 or sin.shape != cos.shape:
        return False
    b, _, s, d = q.shape
    if k.shape[0] != b or k.shape[2] != s or k.shape[3] != d or cos.shape[1] != s or cos.shape[2] != d:
        return False
    if cos.shape[0] not in (1, b) or d < 2 or d & (d - 1):
        return False
    if len({q.dtype, k.dtype, cos.dtype, sin.dtype}) != 1 or len({q.device, k.device, cos.device}) != 1:
        return False
    if q.stride(3) != 1 or k.stride(3) != 1 or cos.stride(2) != 1 or sin.stride() != cos.stride():
        return False
    return runs_on(q.device)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
           unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply_rotary_pos_emb(q, k, cos, sin)`` in one launch; inputs as :func:`supported` says."""
    b, hq, s, d = q.shape
    hk = k.shape[1]
    qo, ko = _like(q), _like(k)
    cb = cos.stride(0) if cos.shape[0] > 1 else 0
    if b * s:
        _rotary[(b * s,)](q, k, qo, ko, cos, sin, s, hq, hk,
                          q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                          qo.stride(0), qo.stride(1), qo.stride(2), ko.stride(0), ko.stride(1), ko.stride(2),
                          cb, cos.stride(1),
                          BLOCK_HQ=triton.next_power_of_2(hq), BLOCK_HK=triton.next_power_of_2(hk), HALF=d // 2)
    return qo, ko


def _dispatcher(original: Callable) -> Callable:
    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1, *args, **kwargs):
        if not args and not kwargs and supported(q, k, cos, sin, unsqueeze_dim):
            return rotary(q, k, cos, sin)
        return original(q, k, cos, sin, unsqueeze_dim, *args, **kwargs)

    apply_rotary_pos_emb.original = original
    # transformers >= 5.25 wraps the function in a hub-kernel ``nn.Module`` that has no __name__
    name = getattr(original, "__name__", type(original).__name__)
    apply_rotary_pos_emb.__doc__ = "The fused rotary kernel where it applies, else " + name
    return apply_rotary_pos_emb


def _agrees(function: Callable, heads: int, kv_heads: int, dim: int, device: torch.device, dtype: torch.dtype,
            tolerance: float) -> bool:
    """The fused kernel against ``function`` on random decode- and prefill-shaped inputs laid out
    as the attention forwards lay them out (a view of ``[batch, seq, heads, dim]``)."""
    g = torch.Generator(device="cpu").manual_seed(5)
    for b, s in ((3, 1), (1, 7)):
        q = torch.randn(b, s, heads, dim, generator=g).to(device, dtype).transpose(1, 2)
        k = torch.randn(b, s, kv_heads, dim, generator=g).to(device, dtype).transpose(1, 2)
        angle = torch.rand(b, s, dim // 2, generator=g) * 40
        angle = torch.cat((angle, angle), dim=-1)
        cos, sin = angle.cos().to(device, dtype), angle.sin().to(device, dtype)
        if not supported(q, k, cos, sin):
            return False
        try:
            with torch.inference_mode():
                want, got = function(q, k, cos, sin), rotary(q, k, cos, sin)
        except Exception:  # noqa: BLE001 - a kernel that cannot run here leaves the original
            return False
        if any(relative_error(x, y) > tolerance for x, y in zip(got, want)):
            return False
    return True


def fuse_rotary(model: torch.nn.Module, tolerance: float = 0.0) -> int:
    """Put the fused kernel behind ``apply_rotary_pos_emb`` in the modeling modules of the
    model's attention layers; returns how many attention layers live in modules where it is
    now in place (0 on a device it does not run on, or where the check failed). The check
    asks for the same bits by default: the name is replaced for every model of the class."""
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else None)
    try:
        param = next(model.parameters())
    except StopIteration:
        return 0
    layers: dict[types.ModuleType, int] = {}
    for module in model.modules():
        home = sys.modules.get(type(module).__module__)
        if type(module).__name__.endswith("Attention") and callable(getattr(home, NAME, None)):
            layers[home] = layers.get(home, 0) + 1
    fused = 0
    for home, count in layers.items():
        current = getattr(home, NAME)
        original = getattr(current, "original", current)
        if heads and dim and _agrees(original, heads, kv_heads, dim, param.device, param.dtype, tolerance):
            if current is original:
                setattr(home, NAME, _dispatcher(original))
            fused += count
    return fused
