"""The gated MLP's ``silu(gate) * up`` as one kernel instead of two.

Why: with the gate and up projections merged (:mod:`inference.engine.fused_linear`) a
Llama-form MLP computes ``act_fn(gate) * up`` over the two halves of one product: a SiLU
kernel writes its result, a multiply reads it back. At one stream that is two of the
decode step's launches per layer (60 for the 7B shape) for a few kilobytes each; at a
prefill step it is a round trip of ``tokens × intermediate`` values through memory. This
kernel reads both halves once and writes the product.

It rounds where PyTorch rounds (the SiLU result to the tensors' dtype, then the product),
but its exponential is Triton's, not CUDA's ``expf``, so it may differ from PyTorch's in the
last place: the MLP it serves is checked against its own unfused output at start-up, per
module class, like the merged projections. On the CPU it runs under Triton's interpreter
(``TRITON_INTERPRET=1``), which is how the tests check it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from inference.engine.triton_round import round_to, runs_on

#: Columns per program.
BLOCK = 1024


@triton.jit
def _silu_and_mul(X, O, width, stride_x, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = cols < width
    gate = tl.load(X + row * stride_x + cols, mask=live, other=0.0).to(tl.float32)
    up = tl.load(X + row * stride_x + width + cols, mask=live, other=0.0).to(tl.float32)
    dtype = O.dtype.element_ty
    act = round_to(gate / (1.0 + tl.exp(-gate)), dtype)
    tl.store(O + row * stride_o + cols, round_to(act * up, dtype).to(dtype), mask=live)


def supported(x: torch.Tensor) -> bool:
    """Whether :func:`silu_and_mul` takes ``x`` (``[..., 2 × width]`` with unit stride in the
    last dimension): on a CUDA device, or any device under Triton's interpreter."""
    if x.dim() < 1 or x.shape[-1] % 2 or x.stride(-1) != 1:
        return False
    return runs_on(x.device)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :w]) * x[..., w:]`` for ``x`` of last dimension ``2w``, in one launch."""
    width = x.shape[-1] // 2
    rows = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
    out = torch.empty((rows.shape[0], width), dtype=x.dtype, device=x.device)
    if rows.shape[0] and width:
        _silu_and_mul[(rows.shape[0], triton.cdiv(width, BLOCK))](rows, out, width, rows.stride(0), out.stride(0),
                                                                  BLOCK=BLOCK)
    return out.reshape(*x.shape[:-1], width)


def is_silu(module) -> bool:
    """Whether an MLP's ``act_fn`` is SiLU (PyTorch's module or transformers' own)."""
    return isinstance(module, torch.nn.SiLU) or type(module).__name__ == "SiLUActivation"
