"""A decoder layer's projections as two matrix multiplies instead of five.

Why: at batch 1 a decode step is a chain of matrix-vector products, and each layer of a
Llama-layout model runs seven of them: q, k, v, o, gate, up and down. For the DeepSeek-LLM-7B
shape a step replayed as a CUDA graph took 6.0 ms on an H200 against about 2.9 ms of weight
reads; part of the gap is kernels too small to reach full memory bandwidth (k and v of a
grouped-query model are a fraction of q's size) and the launches between them. vLLM loads
the same checkpoints with q/k/v merged into one ``qkv_proj`` and gate/up into one
``gate_up_proj``; this does the same to a model transformers has already loaded:

* **MLP** (Llama, Qwen2, Mistral: ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``): one
  ``F.linear`` over the gate and up weights stacked, split in two; the module's forward is
  swapped for that form. With SiLU on a CUDA device, ``silu(gate) * up`` is one kernel over
  the product (:mod:`inference.engine.fused_activation`).
* **Attention**: transformers' forward (left as it is) calls ``q_proj(h)``, ``k_proj(h)``,
  ``v_proj(h)`` in that order. The three ``nn.Linear`` forwards are swapped: ``q_proj``
  computes q, k and v in one ``F.linear`` and leaves the k and v slices, with the input
  tensor itself, in a holder the three share; ``k_proj`` and ``v_proj`` return their slice
  only when called with that very tensor object (``x is holder.x``) and otherwise compute
  their own product, so any other caller or call order still gets the right answer;
  ``v_proj`` empties the holder. Grouped-query shapes (k and v narrower than q) and biases
  (Qwen2's q/k/v) are covered.

The merged weight is one tensor (a non-persistent buffer of the MLP, or of ``q_proj``) and
the Linear modules' own weights become views into it, so memory is not doubled: the
original tensors are released. Fuse a model that is already on its device and dtype (a later
``.to()`` copies the views apart: still correct, twice the memory) and only for serving
(``save_pretrained`` would see shared tensors). Nothing here reads a device value on the
host, so the swapped forwards run inside ``torch.inference_mode()`` and CUDA graph capture.

Each module class is checked once before anything is swapped for good: the first module is
fused, run on a random input and compared with its own unfused output (the attention's three
projections in q, k, v order, and k once more on another tensor); a class that disagrees is
put back as it was and keeps its forward.
"""
from __future__ import annotations

import types
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from inference.engine.slot_attention import relative_error

#: Largest difference allowed by the start-up check, relative to the largest output value,
#: when ``fuse_projections`` is not given one: one stacked product and separate ones add in
#: another order, which 16-bit outputs show and float32 barely does.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}
HALF_TOLERANCE = 1e-2


class _Stash:
    """What ``q_proj`` computed for ``k_proj`` and ``v_proj``, and the input it came from."""

    __slots__ = ("x", "k", "v")

    def __init__(self) -> None:
        self.x = self.k = self.v = None


def _mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    both = F.linear(x, self._fused_weight, self._fused_bias)
    if self._fused_silu is not None and both.stride(-1) == 1:
        return self.down_proj(self._fused_silu(both))
    gate, up = both.split(self._fused_split, -1)
    return self.down_proj(self.act_fn(gate) * up)


def _q_forward(self, x: torch.Tensor) -> torch.Tensor:
    q, k, v = F.linear(x, self._fused_weight, self._fused_bias).split(self._fused_split, -1)
    stash = self._fused_stash
    stash.x, stash.k, stash.v = x, k, v
    return q


def _k_forward(self, x: torch.Tensor) -> torch.Tensor:
    stash = self._fused_stash
    if x is stash.x:
        return stash.k
    return F.linear(x, self.weight, self.bias)


def _v_forward(self, x: torch.Tensor) -> torch.Tensor:
    stash = self._fused_stash
    v = stash.v if x is stash.x else None
    stash.x = stash.k = stash.v = None
    return v if v is not None else F.linear(x, self.weight, self.bias)


def _linears(module: nn.Module, names: tuple[str, ...]) -> list[nn.Linear] | None:
    """The named children when each is a plain ``nn.Linear`` with its own forward, all with the
    same input width, dtype, device and bias presence; else None."""
    lins = [getattr(module, name, None) for name in names]
    if not all(type(lin) is nn.Linear and "forward" not in lin.__dict__ for lin in lins):
        return None
    first = lins[0]
    if first.weight.device.type == "meta":
        return None
    same = all(lin.in_features == first.in_features and lin.weight.dtype == first.weight.dtype
               and lin.weight.device == first.weight.device and (lin.bias is None) == (first.bias is None)
               for lin in lins)
    return lins if same else None


def _mlp_candidate(module: nn.Module) -> bool:
    lins = _linears(module, ("gate_proj", "up_proj"))
    down = getattr(module, "down_proj", None)
    return (lins is not None and isinstance(down, nn.Linear) and "forward" not in module.__dict__
            and callable(getattr(module, "act_fn", None))
            and lins[0].out_features == lins[1].out_features == down.in_features)


def _attention_candidate(module: nn.Module) -> bool:
    return _linears(module, ("q_proj", "k_proj", "v_proj")) is not None


def _merge(owner: nn.Module, lins: list[nn.Linear]) -> Callable[[], None]:
    """Stack the weights (and biases) of ``lins`` into one tensor held by ``owner``, make each
    Linear's parameters views into it; returns the function that puts the originals back."""
    before = [(lin.weight, lin.bias) for lin in lins]
    with torch.inference_mode(False), torch.no_grad():  # ordinary tensors even when called under inference mode
        weight = torch.cat([lin.weight for lin in lins])
        bias = torch.cat([lin.bias for lin in lins]) if lins[0].bias is not None else None
        owner.register_buffer("_fused_weight", weight, persistent=False)
        owner.register_buffer("_fused_bias", bias, persistent=False)
        start = 0
        for lin in lins:
            end = start + lin.out_features
            lin.weight = nn.Parameter(weight[start:end], requires_grad=False)
            if bias is not None:
                lin.bias = nn.Parameter(bias[start:end], requires_grad=False)
            start = end

    def undo() -> None:
        for lin, (w, b) in zip(lins, before):
            lin.weight, lin.bias = w, b
        del owner._fused_weight, owner._fused_bias

    return undo


def _fuse_mlp(mlp: nn.Module) -> Callable[[], None]:
    undo_weights = _merge(mlp, [mlp.gate_proj, mlp.up_proj])
    mlp._fused_split = mlp.gate_proj.out_features
    mlp._fused_silu = _silu_kernel(mlp)
    mlp.forward = types.MethodType(_mlp_forward, mlp)

    def undo() -> None:
        del mlp.forward, mlp._fused_split, mlp._fused_silu
        undo_weights()

    return undo


def _silu_kernel(mlp: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The one-kernel ``silu(gate) * up`` for this MLP, where it applies: a SiLU activation,
    weights on a CUDA device (or Triton's interpreter on), a torch with Triton."""
    try:
        from inference.engine import fused_activation
        from inference.engine.triton_round import runs_on
    except ImportError:  # a torch without Triton: the two elementwise kernels stay
        return None
    if not (fused_activation.is_silu(mlp.act_fn) and runs_on(mlp.gate_proj.weight.device)):
        return None
    return fused_activation.silu_and_mul


def _fuse_attention(attention: nn.Module) -> Callable[[], None]:
    q, k, v = attention.q_proj, attention.k_proj, attention.v_proj
    undo_weights = _merge(q, [q, k, v])
    q._fused_split = (q.out_features, k.out_features, v.out_features)
    stash = _Stash()
    for lin, forward in ((q, _q_forward), (k, _k_forward), (v, _v_forward)):
        lin._fused_stash = stash
        lin.forward = types.MethodType(forward, lin)

    def undo() -> None:
        for lin in (q, k, v):
            del lin.forward, lin._fused_stash
        del q._fused_split
        undo_weights()

    return undo


def _close(got: torch.Tensor, want: torch.Tensor, tolerance: float) -> bool:
    return got.shape == want.shape and relative_error(got, want) <= tolerance


def _input(width: int, like: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(2, 3, width, generator=g).to(like.device, like.dtype)


def _mlp_agrees(mlp: nn.Module, tolerance: float) -> bool:
    """Fuse ``mlp`` if the fused form reproduces its own output; True when it stays fused."""
    x = _input(mlp.gate_proj.in_features, mlp.gate_proj.weight, 5)
    with torch.inference_mode():
        want = mlp(x)
    undo = _fuse_mlp(mlp)
    for _ in range(2):  # with the SiLU kernel, then (if it raised or disagreed) without
        try:
            with torch.inference_mode():
                got = mlp(x)
        except Exception:  # noqa: BLE001 - a kernel that cannot run here leaves the plain form
            got = None
        if got is not None and _close(got, want, tolerance):
            return True
        if mlp._fused_silu is None:
            break
        mlp._fused_silu = None
    undo()
    return False


def _attention_agrees(attention: nn.Module, tolerance: float) -> bool:
    """Fuse the projections of ``attention`` if, called in q, k, v order on one tensor (and k
    again on another), they reproduce their own outputs; True when they stay fused."""
    projs = (attention.q_proj, attention.k_proj, attention.v_proj)
    x = _input(projs[0].in_features, projs[0].weight, 7)
    other = x.flip(0)
    with torch.inference_mode():
        want = [p(x) for p in projs] + [projs[1](other)]
    undo = _fuse_attention(attention)
    with torch.inference_mode():
        got = [p(x) for p in projs] + [projs[1](other)]
    if all(_close(g, w, tolerance) for g, w in zip(got, want)):
        return True
    undo()
    return False


def fuse_projections(model: nn.Module, tolerance: float | None = None) -> int:
    """Merge gate/up of every Llama-form MLP and q/k/v of every attention in ``model`` (see
    the module docstring); returns how many modules (MLPs plus attentions) were fused, 0
    where the checks failed or nothing matched. ``tolerance``: the check's largest relative
    difference (default: ``TOLERANCE`` by weight dtype, ``HALF_TOLERANCE`` for 16-bit)."""
    fused = 0
    for candidate, fuse, agrees in ((_mlp_candidate, _fuse_mlp, _mlp_agrees),
                                    (_attention_candidate, _fuse_attention, _attention_agrees)):
        checked: dict[type, nn.Module | None] = {}  # per class: its checked module, if it stayed fused
        for module in [m for m in model.modules() if candidate(m)]:
            kind = type(module)
            if kind not in checked:
                dtype = next(module.parameters()).dtype
                tol = tolerance if tolerance is not None else TOLERANCE.get(dtype, HALF_TOLERANCE)
                checked[kind] = module if agrees(module, tol) else None
                fused += checked[kind] is not None
            elif checked[kind] is not None:
                fuse(module)
                if hasattr(module, "_fused_silu"):  # the SiLU kernel where the checked module kept it
                    module._fused_silu = checked[kind]._fused_silu
                fused += 1
    return fused


def count_silu_kernels(model: nn.Module) -> int:
    """How many merged MLPs of ``model`` run ``silu(gate) * up`` as one kernel."""
    return sum(getattr(m, "_fused_silu", None) is not None for m in model.modules())
