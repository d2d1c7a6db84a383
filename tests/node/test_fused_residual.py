"""Residual adds inside ``o_proj`` and ``down_proj`` (``inference.engine.fused_residual``), on the CPU.

What the fused model must keep: transformers' own logits and greedy tokens (Llama layout and
Qwen2's), with both adds of every layer really done inside the projections; the right answer
for a projection called on its own; per-layer hidden states when transformers records them
(the in-place add would rewrite them: shown by taking the guard away); the layer's own
forward for a layout the swap does not fit; and the engine's tokens with it on and off.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from inference.engine import fused_residual
from inference.engine.fused_residual import fuse_residuals
from inference.engine.transformers_cb import TransformersEngine
from tests.node.test_fused_linear import PROMPT, _greedy


def _load(model_dir: Path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()


def _logits(model, **kw):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([PROMPT]), **kw)


def test_the_fused_model_adds_inside_its_projections_and_keeps_its_tokens(layout_model_dir):
    model = _load(layout_model_dir)
    want_tokens, want = _greedy(model), _logits(model).logits
    layers = model.config.num_hidden_layers
    assert fuse_residuals(model) == layers
    assert fuse_residuals(model) == 0  # already swapped: nothing twice
    holders = [layer._fused_holder for layer in model.model.layers]
    before = [h.taken for h in holders]
    got = _logits(model).logits
    assert [h.taken - b for h, b in zip(holders, before)] == [2] * layers  # both adds of every layer
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert _greedy(model) == want_tokens


def test_a_projection_called_on_its_own_computes_its_product(layout_model_dir):
    model = _load(layout_model_dir)
    assert fuse_residuals(model) > 0
    layer = model.model.layers[0]
    x = torch.randn(2, 3, layer.self_attn.o_proj.in_features, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        got = layer.self_attn.o_proj(x)
    torch.testing.assert_close(got, F.linear(x, layer.self_attn.o_proj.weight))


def test_recorded_hidden_states_are_not_rewritten(tiny_model_dir, monkeypatch):
    """Transformers records each layer's output; the next layer's in-place add would change
    it afterwards. The swapped layer runs its own forward while transformers records."""
    model = _load(tiny_model_dir)
    want = _logits(model, output_hidden_states=True).hidden_states
    assert fuse_residuals(model) > 0
    got = _logits(model, output_hidden_states=True).hidden_states
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    monkeypatch.setattr(fused_residual, "_recording", lambda: False)
    unguarded = _logits(model, output_hidden_states=True).hidden_states
    assert not all(torch.equal(g, w) for g, w in zip(unguarded, want))


def test_half_precision_passes_the_check(tiny_model_dir):
    model = _load(tiny_model_dir, torch.bfloat16)
    want = _logits(model).logits.float()
    assert fuse_residuals(model) == model.config.num_hidden_layers
    got = _logits(model).logits.float()
    assert (got - want).abs().max() <= 0.05 * want.abs().max()


class _Attention(nn.Module):
    def __init__(self, width: int, scale: float = 1.0):
        super().__init__()
        self.o_proj = nn.Linear(width, width, bias=False)
        self.scale = scale

    def forward(self, hidden_states, **kwargs):
        out = self.o_proj(torch.tanh(hidden_states))
        return (out * self.scale if self.scale != 1.0 else out), None


class _MLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.down_proj = nn.Linear(width, width, bias=False)

    def forward(self, x):
        return self.down_proj(torch.relu(x))


class _Layer(nn.Module):
    """Pre-norm, like Llama's."""

    def __init__(self, width: int, scale: float = 1.0):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(width)
        self.self_attn = _Attention(width, scale)
        self.post_attention_layernorm = nn.LayerNorm(width)
        self.mlp = _MLP(width)

    def forward(self, hidden_states, **kwargs):
        residual = hidden_states
        hidden_states, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
        hidden_states = residual + hidden_states
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class _ScaledLayer(_Layer):
    """Its attention changes o_proj's output after the product."""

    def __init__(self, width: int):
        super().__init__(width, scale=0.5)


class _ParallelLayer(_Layer):
    """Attention and MLP side by side on the same input (GPT-J's form), same submodule names."""

    def forward(self, hidden_states, **kwargs):
        attn, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
        return hidden_states + attn + self.mlp(self.post_attention_layernorm(hidden_states))


class _Model(nn.Module):
    def __init__(self, layers: list[type], width: int = 16, vocab: int = 50):
        super().__init__()
        torch.manual_seed(0)
        self.config = SimpleNamespace(vocab_size=vocab)
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList([kind(width) for kind in layers])

    def forward(self, input_ids, use_cache=False):
        hidden = self.embed(input_ids)
        for layer in self.layers:
            hidden = layer(hidden, position_ids=None)
        return hidden


def test_a_layer_of_another_form_keeps_its_forward():
    model = _Model([_Layer, _ScaledLayer, _ParallelLayer, _Layer])
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        want = model(ids)
    assert fuse_residuals(model) == 2  # the two pre-norm layers
    assert ["forward" in layer.__dict__ for layer in model.layers] == [True, False, False, True]
    assert all("forward" not in layer.self_attn.o_proj.__dict__ for layer in model.layers[1:3])
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), want)


def test_a_failed_check_leaves_the_layers_as_they_were(tiny_model_dir):
    model = _load(tiny_model_dir)
    want = _greedy(model, 12)
    assert fuse_residuals(model, tolerance=-1.0) == 0
    for layer in model.model.layers:
        for module in (layer, layer.self_attn.o_proj, layer.mlp.down_proj):
            assert "forward" not in module.__dict__ and not hasattr(module, "_fused_holder")
    assert _greedy(model, 12) == want


def _engine_tokens(model_dir: Path, **kw) -> tuple[list[list[int]], int, int, int]:
    from tests.node.test_engine_slots import _run

    engine = TransformersEngine(model_dir, device="cpu", max_model_len=256, max_batch=2, max_prefill_tokens=16,
                                attention="varlen", bucketed=True, fuse_norms=True, fuse_projections=True, **kw)
    engine.record_tokens = True
    tokens = _run(engine, ["请帮我查一下订单 12345 的状态。", "How do I reset my password?"], [10, 6], True)
    taken = sum(getattr(m, "_fused_holder").taken for m in engine.model.model.layers if hasattr(m, "_fused_holder"))
    return tokens, engine.fused_residuals, engine.model.config.num_hidden_layers, taken


def test_the_engine_serves_the_same_tokens_with_the_adds_in_the_projections(layout_model_dir):
    """The CUDA path's shapes on the CPU (bucketed steps, variable-length bookkeeping, fused
    norms and projections, prompts spanning prefill steps, two requests in one batch)."""
    plain, none, _, _ = _engine_tokens(layout_model_dir, fuse_residuals=False)
    fused, count, layers, taken = _engine_tokens(layout_model_dir, fuse_residuals=True)
    assert none == 0 and count == layers
    assert taken > 2 * layers * 16  # the steps' adds, not only the start-up check's
    assert fused == plain
    assert [len(t) for t in fused] == [10, 6]
