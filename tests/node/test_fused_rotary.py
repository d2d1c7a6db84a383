"""The rotary embedding as one Triton kernel (``inference.engine.fused_rotary``), run by
Triton's interpreter on the CPU.

What it must keep: transformers' own ``apply_rotary_pos_emb`` results (Llama and Qwen2
modules, decode and prefill shapes, grouped-query keys, the strided views the attention
forwards pass), bit for bit in float32, float16 and bfloat16; transformers' function for
every input the kernel does not take; and the engine's greedy tokens with it on.

Each check runs in a process of its own (``tests.node.interpreted``): the swap is process-wide.
"""
from __future__ import annotations

from inference.tiny_model import make_variant
from tests.node.interpreted import run_json

KERNEL_CHECK = r"""
import json
import torch
from transformers.models.llama import modeling_llama
from transformers.models.qwen2 import modeling_qwen2
from inference.engine import fused_rotary

g = torch.Generator().manual_seed(0)
worst = {}
for home in (modeling_llama, modeling_qwen2):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        # decode rows, a packed prefill row, grouped-query keys (4:1 and 7:1), head dims 16-128
        for b, s, hq, hk, d in ((4, 1, 8, 8, 16), (1, 9, 8, 2, 16), (2, 3, 7, 1, 32), (3, 1, 4, 4, 128)):
            qkv = torch.randn(b, s, (hq + 2 * hk) * d, generator=g).to(dtype)  # the fused projection's output
            q = qkv[..., :hq * d].view(b, s, hq, d).transpose(1, 2)
            k = qkv[..., hq * d:(hq + hk) * d].view(b, s, hk, d).transpose(1, 2)
            angle = torch.rand(b, s, d // 2, generator=g) * 50
            angle = torch.cat((angle, angle), dim=-1)
            cos, sin = angle.cos().to(dtype), angle.sin().to(dtype)
            assert fused_rotary.supported(q, k, cos, sin)
            want = home.apply_rotary_pos_emb(q, k, cos, sin)
            got = fused_rotary.rotary(q, k, cos, sin)
            for x, y in zip(got, want):
                assert x.shape == y.shape and x.dtype == y.dtype
                # in units of the last place at the tensor's largest value
                units = ((x.float() - y.float()).abs().max() / (torch.finfo(dtype).eps * y.float().abs().max())).item()
                key = str(dtype).split(".")[1]
                worst[key] = max(worst.get(key, 0.0), units)

# what the kernel refuses goes to transformers' function
q = torch.randn(1, 2, 3, 16).transpose(1, 2)
cos = torch.randn(1, 3, 16)
refused = {
    "unsqueeze_dim 2": fused_rotary.supported(q.transpose(1, 2), q.transpose(1, 2), cos, cos, unsqueeze_dim=2),
    "head dim 24": fused_rotary.supported(torch.randn(1, 2, 3, 24), torch.randn(1, 2, 3, 24),
                                          torch.randn(1, 3, 24), torch.randn(1, 3, 24)),
    "mixed dtypes": fused_rotary.supported(q, q, cos.half(), cos.half()),
    "dim not contiguous": fused_rotary.supported(q.transpose(2, 3), q.transpose(2, 3), cos, cos),
}
os.environ["TRITON_INTERPRET"] = "0"
refused["cpu without the interpreter"] = fused_rotary.supported(q, q, cos, cos)
os.environ["TRITON_INTERPRET"] = "1"

# the swap: in place once per module, the original kept, odd inputs sent to it
model = type("M", (torch.nn.Module,), {})()
model.config = type("C", (), dict(num_attention_heads=4, num_key_value_heads=2, hidden_size=64))()
model.attn = modeling_qwen2.Qwen2Attention.__new__(modeling_qwen2.Qwen2Attention)
torch.nn.Module.__init__(model.attn)
model.attn.p = torch.nn.Parameter(torch.zeros(1))
original = modeling_qwen2.apply_rotary_pos_emb
counts = [fused_rotary.fuse_rotary(model), fused_rotary.fuse_rotary(model)]
swapped = modeling_qwen2.apply_rotary_pos_emb
odd = torch.randn(1, 2, 3, 24), torch.randn(1, 2, 3, 24), torch.randn(1, 3, 24), torch.randn(1, 3, 24)
fallback = all(torch.equal(x, y) for x, y in zip(swapped(*odd), original(*odd)))
print(json.dumps({"worst": worst, "refused": refused, "counts": counts, "kept": swapped.original is original,
                  "swapped": swapped is not original, "llama untouched": modeling_llama.apply_rotary_pos_emb.__module__,
                  "fallback": fallback}))
"""


def test_the_kernel_computes_what_transformers_computes():
    """Bit for bit in float32, float16 and bfloat16 against both modules' own function. Inputs it does not take are refused and
    reach transformers' function; the swap happens once per module and keeps the original."""
    got = run_json(KERNEL_CHECK)
    assert got["worst"] == {"float32": 0, "float16": 0, "bfloat16": 0}
    assert not any(got["refused"].values()), got["refused"]
    assert got["counts"] == [1, 1]  # one attention layer; the second call keeps the first swap
    assert got["kept"] and got["swapped"] and got["fallback"]
    assert got["llama untouched"] == "transformers.models.llama.modeling_llama"


ENGINE_CHECK = r"""
import json
from inference.engine.transformers_cb import TransformersEngine
from tests.node.test_engine_slots import _run

out = {}
for fuse in (False, True):  # unfused first: the swap is process-wide
    engine = TransformersEngine(sys.argv[1], device="cpu", max_model_len=256, max_batch=2, max_prefill_tokens=16,
                                attention="varlen", bucketed=True, fuse_norms=True, fuse_projections=True,
                                fuse_rotary=fuse)
    engine.record_tokens = True
    tokens = _run(engine, ["请帮我查一下订单 12345 的状态。", "How do I reset my password?"], [10, 6], True)
    out[str(fuse)] = {"tokens": tokens, "layers": engine.fused_rotary,
                      "of": engine.model.config.num_hidden_layers}
print(json.dumps(out))
"""


def test_the_engine_serves_the_same_tokens_with_the_fused_rotary_embedding(tiny_model_dir, tmp_path):
    """The CUDA path's shapes on the CPU (bucketed steps, variable-length bookkeeping, fused
    norms and projections, a 16-token prefill budget so prompts span steps, two requests in
    one batch), with the rotary kernel and without: the same greedy tokens, for the Llama
    layout and Qwen2's grouped-query one; every attention layer reports it."""
    for model_dir in (tiny_model_dir, make_variant(tiny_model_dir, tmp_path / "qwen2", "qwen2-r1")):
        got = run_json(ENGINE_CHECK, str(model_dir))
        plain, fused = got["False"], got["True"]
        assert plain["layers"] == 0 and fused["layers"] == fused["of"] > 0
        assert fused["tokens"] == plain["tokens"]
        assert [len(t) for t in fused["tokens"]] == [10, 6]
