"""A decoder layer's two residual adds inside the matrix multiplies before them.

Why: a pre-norm decoder layer (Llama, Qwen2, Mistral) ends each half with
``hidden = residual + proj(x)``: ``o_proj`` after the attention, ``down_proj`` after the MLP.
Each add is a kernel of its own that reads two ``[tokens, hidden]`` arrays and writes one:
60 kernels per decode step of a 30-layer model, about 2.7 µs each at 256 rows on an H200
(0.16 ms of an 18.5 ms replayed step), plus the gap between kernels. A matrix multiply
adds into its output for free: ``residual.addmm_(x, W.T)`` is one cuBLAS call with
``beta = 1``, which reads the residual as it writes the product. (``torch.addmm`` into a
new tensor first copies the residual there, a kernel of its own again: the add must be in
place.)

How it is put in place: the layer's forward is swapped for one that calls the same
submodules in the same order (input norm, attention, post-attention norm, MLP) and leaves
the residual, before each half, in a holder ``o_proj`` and ``down_proj`` share. Each of
the two Linear forwards is swapped too: called while the holder holds a residual of the
right shape, it adds its product into that residual and returns it; otherwise it computes
its product as before. The layer then sees whether its half's projection took the residual
and adds it itself when not, so an attention that never calls ``o_proj`` (or calls it on
another shape) still gets the right answer. The result is also more exact in 16 bits: the
product is rounded once, after the add, rather than before and after it.

In place means the layer's input is overwritten by its first half. The engine's model never
returns per-layer hidden states; where transformers records them (``output_hidden_states``)
the layer runs its own forward, and so does a call with positional arguments beyond the
hidden states (the swapped forward passes keyword arguments on as they came).

Each layer class is checked once before anything stays swapped: the model runs a short
random prompt with hooks that keep the first layer's input, keyword arguments and output;
the swapped forward then runs on a copy of that input with those arguments and must give
that output within tolerance. A class that disagrees, raises, or falls back to its own
adds keeps its forward.
"""
from __future__ import annotations

import types
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from inference.engine.slot_attention import relative_error

#: The check's largest difference relative to the largest output value, by dtype (default
#: for 16-bit: ``HALF_TOLERANCE``): the fused form rounds once where the plain one rounds twice.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}
HALF_TOLERANCE = 1e-2

#: The submodules a layer must have, and nothing else with parameters.
PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")


class _Holder:
    """The residual the next projection adds into (None once taken, or when there is none),
    and how many times a projection took one (what the start-up check reads)."""

    __slots__ = ("residual", "taken")

    def __init__(self) -> None:
        self.residual: torch.Tensor | None = None
        self.taken = 0


def _into_residual(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    residual = self._fused_holder.residual
    if (residual is None or residual.shape[:-1] != x.shape[:-1] or residual.shape[-1] != self.out_features
            or residual.dtype != self.weight.dtype or x.dtype != self.weight.dtype or not residual.is_contiguous()):
        return F.linear(x, self.weight, self.bias)
    self._fused_holder.residual = None
    self._fused_holder.taken += 1
    residual.view(-1, self.out_features).addmm_(x.reshape(-1, self.in_features), self.weight.t())
    return residual


def _recording() -> bool:
    """Whether transformers is recording per-layer outputs in this call (which an in-place
    add would rewrite after they were recorded)."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # a transformers without it records through returned tuples
        return False
    return bool(_active_collector.get())  # an empty collector records nothing


def _half(holder: _Holder, residual: torch.Tensor, run: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``residual + run()``, where the projection at the end of ``run`` may have added into
    ``residual`` already."""
    holder.residual = residual
    try:
        out = run()
    finally:
        took = holder.residual is None
        holder.residual = None
    if not took:
        return residual + out
    if out is not residual:
        raise RuntimeError("the projection's output was changed after it took the residual")
    return out


def _layer_forward(self, hidden_states: torch.Tensor, *args, **kwargs):
    if args or _recording() or not hidden_states.is_contiguous():
        return type(self).forward(self, hidden_states, *args, **kwargs)
    holder = self._fused_holder

    def attention() -> torch.Tensor:
        out = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
        return out[0] if isinstance(out, tuple) else out

    hidden_states = _half(holder, hidden_states, attention)
    return _half(holder, hidden_states, lambda: self.mlp(self.post_attention_layernorm(hidden_states)))


def _candidate(layer: nn.Module) -> bool:
    children = dict(layer.named_children())
    if set(children) != set(PARTS) or "forward" in layer.__dict__:
        return False
    o_proj = getattr(children["self_attn"], "o_proj", None)
    down_proj = getattr(children["mlp"], "down_proj", None)
    return all(type(lin) is nn.Linear and lin.bias is None and "forward" not in lin.__dict__
               for lin in (o_proj, down_proj))


def _fuse(layer: nn.Module) -> Callable[[], None]:
    holder = _Holder()
    lins = (layer.self_attn.o_proj, layer.mlp.down_proj)
    layer._fused_holder = holder
    layer.forward = types.MethodType(_layer_forward, layer)
    for lin in lins:
        lin._fused_holder = holder
        lin.forward = types.MethodType(_into_residual, lin)

    def undo() -> None:
        for module in (layer, *lins):
            del module.forward, module._fused_holder

    return undo


def _agrees(layer: nn.Module, call: tuple, tolerance: float) -> bool:
    """Fuse ``layer`` if, on the recorded call, the fused forward reproduces the output and
    both projections added into the residual; True when it stays fused."""
    hidden, kwargs, want = call
    undo = _fuse(layer)
    try:
        with torch.inference_mode():
            got = layer(hidden.clone(), **kwargs)
        got = got[0] if isinstance(got, tuple) else got
        ok = (got.shape == want.shape and relative_error(got, want) <= tolerance
              and layer._fused_holder.taken == 2)
    except Exception:  # noqa: BLE001 - a layer the swap does not fit keeps its forward
        ok = False
    if not ok:
        undo()
    return ok


def _record(layers: list[nn.Module], model: nn.Module) -> dict[int, tuple]:
    """The first call of each of ``layers`` in one forward of ``model`` over a random prompt
    (no cache, so the call can be repeated): input, keyword arguments, output."""
    calls: dict[int, tuple] = {}

    def hook(module, args, kwargs, output):
        if id(module) not in calls and len(args) == 1:
            out = output[0] if isinstance(output, tuple) else output
            calls[id(module)] = (args[0].clone(), dict(kwargs), out.clone())

    handles = [layer.register_forward_hook(hook, with_kwargs=True) for layer in layers]
    try:
        param = next(model.parameters())
        vocab = getattr(model.config, "vocab_size", 100)
        ids = torch.randint(0, vocab, (1, 12), generator=torch.Generator().manual_seed(9)).to(param.device)
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)
    except Exception:  # noqa: BLE001 - a model that does not run this way keeps its layers
        return {}
    finally:
        for handle in handles:
            handle.remove()
    return calls


def fuse_residuals(model: nn.Module, tolerance: float | None = None) -> int:
    """Move the residual adds of every pre-norm decoder layer of ``model`` into its
    ``o_proj`` and ``down_proj`` (see the module docstring); returns how many layers were
    fused, 0 where the checks failed or nothing matched. ``tolerance``: the check's largest
    relative difference (default: ``TOLERANCE`` by weight dtype, ``HALF_TOLERANCE`` for 16-bit)."""
    layers = [m for m in model.modules() if _candidate(m)]
    firsts: dict[type, nn.Module] = {}
    for layer in layers:
        firsts.setdefault(type(layer), layer)
    calls = _record(list(firsts.values()), model) if firsts else {}
    fused = 0
    for kind, first in firsts.items():
        call = calls.get(id(first))
        dtype = first.self_attn.o_proj.weight.dtype
        tol = tolerance if tolerance is not None else TOLERANCE.get(dtype, HALF_TOLERANCE)
        if call is None or not _agrees(first, call, tol):
            continue
        for layer in layers:
            if type(layer) is kind:
                if layer is not first:
                    _fuse(layer)
                fused += 1
    return fused

