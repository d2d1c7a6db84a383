"""RMSNorm as one kernel instead of seven.

Why: transformers' ``LlamaRMSNorm`` (and the Qwen2/Mistral copies of it) computes in
elementwise steps: cast to float32, square, mean, add epsilon, reciprocal square root,
multiply, cast back, multiply by the weight. Each is a kernel of its own, two norms per
layer, so a 30-layer model spends about 400 small launches per decode step on them. Inside
a CUDA graph a launch is cheap but not free (a few microseconds each), and at one stream a
decode step is only a few milliseconds of weight reads: that is the share this removes.

Two one-kernel forms:

* PyTorch's ``F.rms_norm``: a fused kernel on CUDA (float32 accumulation, one pass). It
  multiplies by the weight in float32 and rounds once, where transformers rounds the
  normalised value to the model's dtype first and the product again. On an H200 it took
  6.4 µs per call at 256 rows of 4,096 (4 MB moved: well under the card's bandwidth), 61
  calls per decode step of the 7B shape.
* :func:`rms_norm`, a Triton kernel, one program per row: the row is read once, its mean
  square summed in float32, and the result rounded where transformers rounds it (the
  normalised value, then its product with the weight), so it reproduces the module to the
  last place but for the order of the float32 sum.

Where both run (CUDA, a weight of the input's dtype) the engine times them at its largest
decode batch at start-up and keeps the faster (:func:`pick`); elsewhere ``F.rms_norm``.

Only modules that compute exactly the Llama form (``weight * x / sqrt(mean(x²) + eps)``,
attribute ``variance_epsilon``) are swapped, and only after the fused form reproduced the
module's own output on a random input; Gemma's ``1 + weight`` form and anything else keep
their own forward. On the CPU the Triton form runs under Triton's interpreter
(``TRITON_INTERPRET=1``), which is how the tests check it.
"""
from __future__ import annotations

import types
from typing import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from inference.engine.slot_attention import relative_error, time_call
from inference.engine.triton_round import round_to, runs_on

#: The forms by name, as :func:`fuse_rms_norms` takes them and the engine's log names them.
TORCH, TRITON = "F.rms_norm", "Triton kernel"


@triton.jit
def _rms_norm(X, W, Y, stride_x, stride_y, width, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    live = cols < width
    x = tl.load(X + row * stride_x + cols, mask=live, other=0.0).to(tl.float32)
    scale = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / width + eps)
    dtype = Y.dtype.element_ty
    normed = round_to(x * scale, dtype)  # transformers: hidden_states.to(input_dtype)
    w = tl.load(W + cols, mask=live, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, round_to(w * normed, dtype).to(dtype), mask=live)


def supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`rms_norm` takes ``x`` with ``weight``: one dtype, unit stride in the last
    dimension, a row of at most 65,536 values, on a CUDA device (or under the interpreter)."""
    return (x.dim() >= 1 and x.dtype == weight.dtype and x.stride(-1) == 1 and weight.stride(-1) == 1
            and x.shape[-1] == weight.shape[0] <= 65536 and x.device == weight.device and runs_on(x.device))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x / sqrt(mean(x²) + eps)).to(x.dtype)`` over the last dimension, in one launch."""
    width = x.shape[-1]
    rows = x.reshape(-1, width)
    out = torch.empty((rows.shape[0], width), dtype=x.dtype, device=x.device)
    if rows.shape[0]:
        block = triton.next_power_of_2(width)
        _rms_norm[(rows.shape[0],)](rows, weight, out, rows.stride(0), out.stride(0), width, eps, BLOCK=block,
                                    num_warps=max(1, min(16, block // 512)))
    return out.view(x.shape)


def _torch_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(hidden_states, (hidden_states.shape[-1],), self.weight, self.variance_epsilon)


def _triton_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    if supported(hidden_states, self.weight):
        return rms_norm(hidden_states, self.weight, self.variance_epsilon)
    return _torch_forward(self, hidden_states)


FORWARDS: dict[str, Callable] = {TORCH: _torch_forward, TRITON: _triton_forward}


def _candidate(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (type(module).__name__.endswith("RMSNorm") and isinstance(weight, torch.Tensor) and weight.dim() == 1
            and isinstance(getattr(module, "variance_epsilon", None), float))


def norms(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's Llama-form RMSNorm modules (what :func:`fuse_rms_norms` may swap)."""
    return [m for m in model.modules() if _candidate(m)]


def pick(model: torch.nn.Module, rows: int) -> tuple[str, str]:
    """The faster form on ``rows`` rows of the model's first norm, and how the two timed
    (``F.rms_norm`` where the Triton form cannot run there: no timing)."""
    found = norms(model)
    if not found:
        return TORCH, "no RMSNorm"
    module = found[0]
    w = module.weight
    x = torch.randn(rows, w.shape[0], device=w.device).to(w.dtype)
    if not supported(x, w):
        return TORCH, "the Triton kernel does not run here"
    if w.device.type != "cuda":
        return TRITON, "not timed (interpreter)"
    with torch.inference_mode():
        times = {name: time_call(lambda f=f: f(module, x), w.device) for name, f in FORWARDS.items()}
    best = min(times, key=times.get)
    return best, f"{times[TRITON] * 1e3:.1f} µs against {times[TORCH] * 1e3:.1f} µs for F.rms_norm at {rows} rows"


def fuse_rms_norms(model: torch.nn.Module, tolerance: float = 1e-2, form: str = TORCH) -> int:
    """Swap the forward of every Llama-form RMSNorm in ``model`` for ``form`` (:data:`TORCH`
    or :data:`TRITON`); returns how many modules were swapped (0 where the check failed or
    none matched)."""
    forward = FORWARDS[form]
    checked: dict[type, bool] = {}
    swapped = 0
    for module in norms(model):
        kind = type(module)
        if kind not in checked:
            checked[kind] = _agrees(module, forward, tolerance)
        if checked[kind]:
            module.forward = types.MethodType(forward, module)
            swapped += 1
    return swapped


def _agrees(module: torch.nn.Module, forward: Callable, tolerance: float) -> bool:
    w = module.weight
    g = torch.Generator(device="cpu").manual_seed(3)
    x = (torch.randn(4, w.shape[0], generator=g) * 3).to(w.device, w.dtype)
    try:
        with torch.inference_mode():
            want = module(x)
            got = forward(module, x)
    except Exception:  # noqa: BLE001 - a form that cannot run here leaves the module as it is
        return False
    return relative_error(got, want) <= tolerance
