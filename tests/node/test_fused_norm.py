"""RMSNorm in one kernel (``inference.engine.fused_norm``): the Triton form run by Triton's
interpreter on the CPU, and ``F.rms_norm``.

What they must keep: transformers' ``LlamaRMSNorm`` (and Qwen2's copy) output. The Triton
form rounds where the module rounds (the normalised value, then the product with the
weight), so in 16 bits it gives the module's bits but where the float32 sum of squares,
added in another order, lands on the other side of a rounding; ``F.rms_norm`` rounds once,
so it differs by up to a unit in the last place more often. Also: widths that are not a
power of two, batched and strided inputs, what the kernel refuses, the swap per module class
with the check that guards it, the choice between the two (untimed under the interpreter),
and the model's logits with the norms swapped.

In a process of its own (``tests.node.interpreted``): the interpreter is a process setting.
"""
from __future__ import annotations

from tests.node.interpreted import run_json

CHECK = r"""
import json
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm
from inference.engine import fused_norm
from inference.engine.slot_attention import relative_error

g = torch.Generator().manual_seed(0)
stats = {}
for kind in (LlamaRMSNorm, Qwen2RMSNorm):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for shape in ((7, 64), (2, 3, 896), (1, 4096), (300, 1000)):
            module = kind(shape[-1], eps=1e-6)
            module.weight.data = (torch.randn(shape[-1], generator=g) * 0.5 + 1).to(dtype)
            x = (torch.randn(*shape, generator=g) * 3).to(dtype)
            with torch.no_grad():
                want = module(x)
                got = fused_norm.rms_norm(x, module.weight, module.variance_epsilon)
                torch_form = F.rms_norm(x, (shape[-1],), module.weight, module.variance_epsilon)
            assert got.shape == want.shape and got.dtype == want.dtype
            key = str(dtype).split(".")[1]
            s = stats.setdefault(key, {"ulps": 0.0, "differ": 0, "torch_differ": 0, "n": 0})
            # in units of the last place at the tensor's largest value
            s["ulps"] = max(s["ulps"], ((got.float() - want.float()).abs().max()
                                        / (torch.finfo(dtype).eps * want.float().abs().max())).item())
            s["differ"] += int((got != want).sum())
            s["torch_differ"] += int((torch_form != want).sum())
            s["n"] += want.numel()

wide = torch.randn(5, 3 * 64, generator=g)
strided = wide[:, 64:128]  # rows further apart than their width
weight = torch.rand(64, generator=g) + 0.5
strided_error = relative_error(fused_norm.rms_norm(strided, weight, 1e-5), F.rms_norm(strided, (64,), weight, 1e-5))
refused = {"mixed dtypes": fused_norm.supported(torch.randn(2, 8), torch.ones(8, dtype=torch.bfloat16)),
           "last dim strided": fused_norm.supported(torch.randn(8, 4).t(), torch.ones(8)),
           "width": fused_norm.supported(torch.randn(2, 8), torch.ones(9))}
os.environ["TRITON_INTERPRET"] = "0"
refused["cpu without the interpreter"] = fused_norm.supported(torch.randn(2, 8), torch.ones(8))
picked_cpu = fused_norm.pick(torch.nn.Sequential(LlamaRMSNorm(8)), 4)
os.environ["TRITON_INTERPRET"] = "1"
picked = fused_norm.pick(torch.nn.Sequential(LlamaRMSNorm(8)), 4)

# a module whose forward is not the Llama form fails its check and keeps its forward
class Shifted(LlamaRMSNorm):
    def forward(self, x):
        return super().forward(x) + 1
odd = torch.nn.Sequential(Shifted(16))
kept = fused_norm.fuse_rms_norms(odd, form=fused_norm.TRITON) == 0 and "forward" not in vars(odd[0])

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=g)
with torch.no_grad():
    before = model(input_ids=ids).logits
    swapped = fused_norm.fuse_rms_norms(model, form=fused_norm.TRITON)
    after = model(input_ids=ids).logits
print(json.dumps({"stats": stats, "strided": strided_error, "refused": refused, "picked": picked,
                  "picked_cpu": picked_cpu, "kept": kept, "swapped": swapped,
                  "layers": model.config.num_hidden_layers, "logits": relative_error(after, before),
                  "argmax": bool(torch.equal(after.argmax(-1), before.argmax(-1)))}))
"""


def test_the_triton_norm_computes_what_transformers_computes(tiny_model_dir):
    """16-bit: the module's bits in all but a handful of places (the float32 sum's order),
    never more than one unit in the last place off, and closer to the module than
    ``F.rms_norm``; float32 to rounding. Strided rows; refusals; the swap guarded by its
    check; the engine's choice untimed under the interpreter and ``F.rms_norm`` where the
    kernel cannot run; the tiny model's logits unchanged with every norm swapped."""
    got = run_json(CHECK, str(tiny_model_dir))
    for key in ("float16", "bfloat16"):
        s = got["stats"][key]
        assert s["ulps"] <= 1.0, (key, s)
        assert s["differ"] <= s["n"] // 1000, (key, s)
        assert s["differ"] < s["torch_differ"], (key, s)  # F.rms_norm rounds once: further from the module
    assert got["stats"]["float32"]["ulps"] <= 8
    assert got["strided"] < 1e-6
    assert got["refused"] == {"mixed dtypes": False, "last dim strided": False, "width": False,
                              "cpu without the interpreter": False}
    assert got["picked"] == ["Triton kernel", "not timed (interpreter)"]
    assert got["picked_cpu"] == ["F.rms_norm", "the Triton kernel does not run here"]
    assert got["kept"]
    assert got["swapped"] == 2 * got["layers"] + 1
    assert got["logits"] < 1e-5 and got["argmax"]
