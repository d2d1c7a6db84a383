"""What the fused Triton kernels share (:mod:`inference.engine.fused_rotary`, which must give
PyTorch's bits, and :mod:`inference.engine.fused_activation`, which comes close): where they
run, and rounding float32 values the way PyTorch rounds each elementwise result.

Why not a plain conversion: PyTorch's 16-bit elementwise kernels compute in float32 and round
every result to nearest even. A kernel that does the same with ``x.to(bfloat16).to(float32)``
may lose the rounding, because the compiler is free to drop the conversion pair: on an H200
the rotary kernel written that way differed from PyTorch's in the last place. Triton's
interpreter, which the CPU tests use, truncates that conversion instead. Integer arithmetic
on the bits is neither dropped nor truncated.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def runs_on(device: torch.device) -> bool:
    """Whether the fused kernels run on ``device``: a CUDA device, or any device while
    Triton's interpreter is on (``TRITON_INTERPRET=1``, how the CPU tests run them)."""
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def round_to(x, dtype: tl.constexpr):
    """``x`` (float32) rounded to ``dtype`` to nearest even, as PyTorch rounds each result, and
    returned as float32. bfloat16 by integer arithmetic on the bits: the compiler may drop a
    float32 → bfloat16 → float32 conversion pair (on an H200 the result then differed from
    PyTorch's in the last place), and Triton's interpreter truncates that conversion."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(dtype, fp_downcast_rounding="rtne").to(tl.float32)
