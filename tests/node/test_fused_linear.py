"""Merged q/k/v and gate/up projections (``inference.engine.fused_linear``), on the CPU in float32.

What the fused model must keep: transformers' own greedy tokens (Llama layout, and Qwen2's
grouped-query attention with q/k/v bias), the weights' memory (the Linear weights become
views into the merged tensor and the originals are released), the right answer for a
projection called on its own, and the module's own forward wherever the start-up check
disagrees. The engine's tokens are the same with it on and off.
"""
from __future__ import annotations

import gc
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from inference.engine import fused_linear
from inference.engine.fused_linear import fuse_projections
from inference.engine.transformers_cb import TransformersEngine

PROMPT = [5, 17, 42, 99, 7, 300, 12, 8]


def _load(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _greedy(model, n: int = 24) -> list[int]:
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=model.config.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def test_fused_model_generates_the_same_tokens_from_shared_weights(layout_model_dir):
    model = _load(layout_model_dir)
    want = _greedy(model)
    layer = model.model.layers[0]
    bytes_before = sum(p.numel() * p.element_size() for p in model.parameters())
    originals = [weakref.ref(p) for p in (layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight,
                                          layer.self_attn.q_proj.weight, layer.self_attn.v_proj.weight)]

    layers = model.config.num_hidden_layers
    assert fuse_projections(model) == 2 * layers
    assert fuse_projections(model) == 0  # already fused: nothing swapped twice

    gc.collect()
    assert all(ref() is None for ref in originals)  # the unmerged tensors are released
    storages = {}
    for p in model.parameters():
        storages[_ptr(p)] = p.untyped_storage().nbytes()
    assert sum(storages.values()) == bytes_before  # memory not doubled
    for layer in model.model.layers:
        mlp, att = layer.mlp, layer.self_attn
        assert _ptr(mlp.gate_proj.weight) == _ptr(mlp.up_proj.weight) == _ptr(mlp._fused_weight)
        assert mlp.up_proj.weight.data_ptr() > mlp.gate_proj.weight.data_ptr()
        projs = (att.q_proj, att.k_proj, att.v_proj)
        assert len({_ptr(p.weight) for p in projs} | {_ptr(att.q_proj._fused_weight)}) == 1
        if att.q_proj.bias is not None:  # Qwen2
            assert len({_ptr(p.bias) for p in projs} | {_ptr(att.q_proj._fused_bias)}) == 1
    if model.config.model_type == "qwen2":
        att = model.model.layers[0].self_attn
        assert att.k_proj.out_features < att.q_proj.out_features  # grouped-query heads
        assert att.q_proj.bias is not None

    # k_proj and v_proj inside the model take their slices of q_proj's single product
    taken = []
    att = model.model.layers[1].self_attn
    att.q_proj.register_forward_hook(lambda m, a, out: taken.append(("q", _ptr(out))))
    att.k_proj.register_forward_hook(lambda m, a, out: taken.append(("k", _ptr(out))))
    att.v_proj.register_forward_hook(lambda m, a, out: taken.append(("v", _ptr(out))))
    assert _greedy(model) == want
    assert taken and len({ptr for _, ptr in taken[:3]}) == 1 and [k for k, _ in taken[:3]] == ["q", "k", "v"]


def test_a_projection_called_on_another_input_computes_its_own(layout_model_dir):
    model = _load(layout_model_dir)
    att = model.model.layers[0].self_attn
    q, k, v = att.q_proj, att.k_proj, att.v_proj
    width = q.in_features
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, width, generator=g), torch.randn(3, width, generator=g)
    want = {name: F.linear(t, lin.weight, lin.bias) for name, lin, t in
            (("k_y", k, y), ("v_y", v, y), ("q_x", q, x), ("k_x", k, x), ("v_x", v, x))}
    assert fuse_projections(model) > 0
    with torch.inference_mode():
        torch.testing.assert_close(k(y), want["k_y"])        # nothing stashed yet
        torch.testing.assert_close(q(x), want["q_x"])
        torch.testing.assert_close(k(y), want["k_y"])        # a fresh tensor, not q's input
        torch.testing.assert_close(k(x.clone()), want["k_x"])  # equal values, another object
        torch.testing.assert_close(v(y), want["v_y"])        # and v empties the holder
        torch.testing.assert_close(k(x), want["k_x"])
        torch.testing.assert_close(v(x), want["v_x"])
        torch.testing.assert_close(q(x), want["q_x"])        # the stashed order, for comparison
        torch.testing.assert_close(k(x), want["k_x"])
        torch.testing.assert_close(v(x), want["v_x"])


def test_a_failed_check_leaves_the_modules_as_they_were(tiny_model_dir):
    model = _load(tiny_model_dir)
    want = _greedy(model, 12)
    layer = model.model.layers[0]
    weight = layer.mlp.gate_proj.weight
    assert fuse_projections(model, tolerance=-1.0) == 0
    assert layer.mlp.gate_proj.weight is weight
    for module in (layer.mlp, layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
        assert "forward" not in module.__dict__ and not hasattr(module, "_fused_weight")
    assert _ptr(layer.mlp.gate_proj.weight) != _ptr(layer.mlp.up_proj.weight)
    assert _greedy(model, 12) == want


class _SwappedMLP(nn.Module):
    """The Llama MLP's attributes with gate and up in each other's places."""

    def __init__(self, width: int = 16, inner: int = 24):
        super().__init__()
        self.gate_proj = nn.Linear(width, inner, bias=False)
        self.up_proj = nn.Linear(width, inner, bias=False)
        self.down_proj = nn.Linear(inner, width, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.up_proj(x)) * self.gate_proj(x))


class _LlamaMLP(_SwappedMLP):
    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class _Attention(nn.Module):
    """An attention that calls v before k: still right, only without the shared product."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width // 2)
        self.v_proj = nn.Linear(width, width // 2)

    def forward(self, x):
        return torch.cat([self.q_proj(x), self.v_proj(x), self.k_proj(x)], -1)


def test_a_class_of_another_form_keeps_its_forward():
    torch.manual_seed(0)
    model = nn.ModuleList([_SwappedMLP(), _SwappedMLP(), _LlamaMLP(), _Attention()])
    x = torch.randn(2, 5, 16)
    with torch.inference_mode():
        want = [m(x) for m in model]
    assert fuse_projections(model) == 2  # the Llama-form MLP and the attention's projections
    assert all("forward" not in m.__dict__ and not hasattr(m, "_fused_weight") for m in model[:2])
    assert "forward" in model[2].__dict__
    with torch.inference_mode():
        for m, w in zip(model, want):
            torch.testing.assert_close(m(x), w)


def test_the_check_tolerance_follows_the_dtype(monkeypatch):
    seen = []
    monkeypatch.setattr(fused_linear, "_mlp_agrees", lambda m, tol: seen.append(tol) or False)
    fuse_projections(nn.ModuleList([_LlamaMLP()]))
    fuse_projections(nn.ModuleList([_LlamaMLP().to(torch.bfloat16)]))
    assert seen == [fused_linear.TOLERANCE[torch.float32], fused_linear.HALF_TOLERANCE]


def _engine_tokens(model_dir: Path, **kw) -> tuple[list[list[int]], int, int]:
    from tests.node.test_engine_slots import _run

    engine = TransformersEngine(model_dir, device="cpu", max_model_len=256, max_batch=2, max_prefill_tokens=16,
                                attention="varlen", bucketed=True, fuse_norms=True, **kw)
    engine.record_tokens = True
    tokens = _run(engine, ["请帮我查一下订单 12345 的状态。", "How do I reset my password?"], [10, 6], True)
    return tokens, engine.fused_projections, engine.model.config.num_hidden_layers


def test_the_engine_serves_the_same_tokens_with_fused_projections(tiny_model_dir):
    """The CUDA path's shapes on the CPU (bucketed steps, variable-length bookkeeping, fused
    RMSNorms), with the projections fused and not."""
    plain, none, _ = _engine_tokens(tiny_model_dir, fuse_projections=False)
    fused, count, layers = _engine_tokens(tiny_model_dir, fuse_projections=True)
    assert none == 0 and count == 2 * layers
    assert fused == plain
    assert [len(t) for t in fused] == [10, 6]
