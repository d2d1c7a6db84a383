"""``silu(gate) * up`` as one Triton kernel (``inference.engine.fused_activation``), run by
Triton's interpreter on the CPU, and the merged MLP that calls it.

What it must keep: PyTorch's ``F.silu(gate) * up`` over the two halves of the merged
gate/up product (float32 to rounding, 16-bit within a unit in the last place, since its
exponential is Triton's), widths that are not a multiple of its block, batched and strided
inputs; PyTorch's form for anything it does not take; and the MLP's own output once the
projections are merged. In a process of its own (``tests.node.interpreted``).
"""
from __future__ import annotations

from tests.node.interpreted import run_json

CHECK = r"""
import json
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM
from inference.engine import fused_activation
from inference.engine.fused_linear import fuse_projections
from inference.engine.slot_attention import relative_error

g = torch.Generator().manual_seed(0)
worst = {}
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for shape in ((5, 2 * 344), (2, 3, 2 * 1100), (1, 2 * 64)):  # tiny's 344; past one 1,024-wide block
        x = (torch.randn(*shape, generator=g) * 4).to(dtype)
        width = shape[-1] // 2
        want = F.silu(x[..., :width]) * x[..., width:]
        got = fused_activation.silu_and_mul(x)
        assert got.shape == want.shape and got.dtype == dtype
        key = str(dtype).split(".")[1]
        worst[key] = max(worst.get(key, 0.0), relative_error(got, want))
wide = torch.randn(4, 3 * 128, generator=g)
strided = wide[:, :256]  # rows further apart than their width
strided_ok = torch.equal(fused_activation.silu_and_mul(strided), F.silu(strided[:, :128]) * strided[:, 128:]) or \
    relative_error(fused_activation.silu_and_mul(strided), F.silu(strided[:, :128]) * strided[:, 128:]) < 1e-6
refused = {"odd width": fused_activation.supported(torch.randn(3, 7)),
           "last dim strided": fused_activation.supported(torch.randn(8, 4).t())}
os.environ["TRITON_INTERPRET"] = "0"
refused["cpu without the interpreter"] = fused_activation.supported(torch.randn(3, 8))
os.environ["TRITON_INTERPRET"] = "1"

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
mlp = model.model.layers[0].mlp
x = torch.randn(2, 5, mlp.gate_proj.in_features, generator=g)
with torch.inference_mode():
    before = mlp(x)
    count = fuse_projections(model)
    after = mlp(x)
took = [m.mlp._fused_silu is fused_activation.silu_and_mul for m in model.model.layers]
# a kernel that cannot run (here: raises) leaves every MLP merged without it
def broken(x):
    raise RuntimeError("no kernel here")
fused_activation.silu_and_mul = broken
other = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
with torch.inference_mode():
    want = other.model.layers[1].mlp(x)
    fallback_count = fuse_projections(other)
    fallback = relative_error(other.model.layers[1].mlp(x), want)
fallback_silu = [m.mlp._fused_silu for m in other.model.layers]
print(json.dumps({"fallback": [fallback_count, fallback, fallback_silu == [None] * len(fallback_silu)],
                  "worst": worst, "strided": strided_ok, "refused": refused, "count": count,
                  "silu": took,
                  "mlp": relative_error(after, before)}))
"""


def test_the_kernel_computes_silu_times_up_and_serves_the_merged_mlp(tiny_model_dir):
    """The kernel against PyTorch's form in three dtypes; what it refuses; every merged MLP
    calling it with its output unchanged; and, when the kernel cannot run, the MLPs merged
    all the same, with PyTorch's SiLU."""
    got = run_json(CHECK, str(tiny_model_dir))
    assert got["worst"]["float32"] < 1e-6, got["worst"]
    assert got["worst"]["float16"] < 1e-3 and got["worst"]["bfloat16"] < 8e-3, got["worst"]  # a unit in the last place
    assert got["strided"]
    assert not any(got["refused"].values()), got["refused"]
    assert all(got["silu"]) and got["count"] > 0  # every layer's MLP took the kernel and stayed merged
    assert got["mlp"] < 1e-5
    count, error, plain = got["fallback"]  # the kernel raising: merged projections, the plain SiLU
    assert count == got["count"] and error < 1e-5 and plain
