"""The 8-bit KV store (``--kv-cache-dtype fp8``), on the CPU.

What is pinned here: the store keeps one byte per value (clamped to e4m3's range, moved
byte for byte); the attention kernels that read it widen it exactly as the reference does
(the Triton kernels under Triton's interpreter, against the reference, and inside the
engine token for token); greedy output over it stays close to the full-precision store on
the trained tiny model; and a configuration that cannot read it is refused with one line.
"""
from __future__ import annotations

import torch
import pytest

from inference.engine.base import EngineError
from inference.engine.slot_cache import FP8_MAX, SlotCache, SlotKVCache, bytes_per_token
from inference.engine.transformers_cb import TransformersEngine
from tests.node.interpreted import run_json
from tests.node.test_engine_slots import PROMPTS, NEW_TOKENS, _engine, _load, _run

F8 = torch.float8_e4m3fn


def test_the_store_keeps_one_byte_per_value_clamped_to_its_range():
    store = SlotKVCache(1, 2, 4, torch.float32, torch.device("cpu"), slots=3, max_len=8, store_dtype=F8)
    assert store.keys[0].dtype == F8 and store.keys[0].element_size() == 1
    new = torch.tensor([0.1, -0.3, 1000.0, -1000.0, 3.0, 7.5, 448.0, -0.0]).view(1, 2, 1, 4)  # [b, heads, q, dim]
    write = store.write_index(torch.tensor([1]), torch.tensor([[5]]))
    keys, _ = SlotCache(store, write, 8, rows=2).update(new, -new, 0)
    assert keys.dtype == torch.float32  # what the model reads back is its own dtype
    kept = store.keys[0][1, 5].float().view(-1)
    assert kept.tolist() == new.clamp(-FP8_MAX, FP8_MAX).to(F8).float().view(-1).tolist()
    assert kept[2] == FP8_MAX and kept[3] == -FP8_MAX  # clamped, not NaN
    assert store.values[0][1, 5].float().view(-1).tolist() == (-kept).tolist()
    # row moves copy bytes: the moved row is the same 8-bit values
    store.move([1], [0], 6)
    assert torch.equal(store.keys[0][0, :6].view(torch.uint8), store.keys[0][1, :6].view(torch.uint8))
    store.move([0, 1], [2, 0], 6)
    assert torch.equal(store.keys[0][2, 5].float(), kept.view(2, 4))


def test_the_store_holds_twice_the_tokens_of_a_bf16_store_in_the_same_memory(tiny_model_dir):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    assert 2 * bytes_per_token(cfg, F8) == bytes_per_token(cfg, torch.bfloat16)
    engine = _engine(tiny_model_dir, max_batch=2, attention="varlen", kv_cache_dtype="fp8")
    _load(engine)
    assert engine._kv.keys[0].dtype == F8 and engine._kv.store_dtype == F8
    assert engine.attention_path.startswith("variable length")


def test_greedy_tokens_over_the_8_bit_store_stay_close_to_the_full_store(tiny_model_dir):
    """The trained tiny model in float32, same requests in one mixed batch (chunked prefill,
    joins, slot moves), with the store in float32 and in 8 bits. e4m3 keeps 3 mantissa bits,
    so greedy output may part at a near-tie; on these prompts most tokens agree and each
    reply's first tokens do (measured: 47 of 55, first parting at token 12)."""
    kw = dict(max_batch=3, bucketed=True, max_prefill_tokens=16, attention="varlen")
    full = _run(_engine(tiny_model_dir, **kw), PROMPTS, NEW_TOKENS, True)
    eight = _run(_engine(tiny_model_dir, kv_cache_dtype="fp8", **kw), PROMPTS, NEW_TOKENS, True)
    assert [len(t) for t in eight] == NEW_TOKENS
    agree = sum(a == b for x, y in zip(full, eight) for a, b in zip(x, y))
    assert agree >= 0.8 * sum(NEW_TOKENS), (agree, full, eight)
    assert all(x[:6] == y[:6] for x, y in zip(full, eight)), (full, eight)


def test_a_configuration_that_cannot_read_the_store_is_refused_in_one_line(tiny_model_dir):
    with pytest.raises(ValueError, match="needs the variable-length attention"):
        TransformersEngine(tiny_model_dir, device="cpu", attention="masked", kv_cache_dtype="fp8")
    with pytest.raises(ValueError, match="kv_cache_dtype must be auto or one of"):
        TransformersEngine(tiny_model_dir, device="cpu", kv_cache_dtype="int4")
    engine = _engine(tiny_model_dir, max_batch=2, kv_cache_dtype="fp8")  # attention auto: no kernel on the CPU
    with pytest.raises(EngineError, match="an 8-bit KV store needs a variable-length attention kernel: "
                                          "the Triton attention kernel needs a CUDA device"):
        _load(engine)


def test_the_serve_command_refuses_fp8_with_the_masked_attention(tiny_model_dir):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "seekwatch", "serve", "--engine", "transformers", "--model",
                          str(tiny_model_dir), "--kv-cache-dtype", "fp8", "--attention", "masked"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "--kv-cache-dtype fp8 needs the variable-length attention, not --attention masked" in out.stderr
    assert "Traceback" not in out.stderr


KERNELS = """
import torch
from inference.engine import slot_attention, triton_decode, triton_prefill
from inference.engine.slot_attention import reference_varlen, relative_error
cpu, f8 = torch.device("cpu"), torch.float8_e4m3fn
errors = {}
for store in (None, f8):
    name = "fp8" if store else "fp32"
    # the start-up check's decode and causal prefill cases, 4 query heads over 4, 2 and 1 key/value heads
    errors[f"prefill {name}"] = max(slot_attention.check_kernel(triton_prefill.make_kernel(16, 16), cpu, torch.float32,
                                                                4, kv, 16, store_dtype=store) for kv in (4, 2, 1))
    errors[f"decode {name}"] = max(slot_attention.check_kernel(k, cpu, torch.float32, 4, 2, 16, decode_only=True,
                                                               store_dtype=store) for k in triton_decode.kernels(2))
# queries over several tiles, a sequence with no queries, keys longer than the queries (a later chunk)
g = torch.Generator().manual_seed(3)
k = torch.randn(400, 2, 16, generator=g).to(f8)
v = torch.randn(400, 2, 16, generator=g).to(f8)
nq, used, starts = [40, 0, 9, 33], [40, 0, 100, 33], [0, 40, 150, 300]
q = torch.randn(sum(nq), 4, 16, generator=g)
i32 = dict(dtype=torch.int32)
cu_q = torch.tensor([0, *torch.tensor(nq).cumsum(0).tolist()], **i32)
args = (q, k, v, cu_q, torch.tensor(starts + [400], **i32), torch.tensor(used, **i32), max(nq), max(used), True, 0.25)
errors["prefill tiles"] = relative_error(triton_prefill.make_kernel(16, 16)(*args), reference_varlen(*args))
print(__import__("json").dumps(errors))
"""


def test_the_triton_kernels_read_the_8_bit_store_as_the_reference_does():
    """Triton's interpreter on the CPU: the attention kernel (prefill and decode steps,
    grouped heads, queries over several tiles, an empty sequence) and the decode kernels,
    each over a float32 and an 8-bit store, against the reference (which widens the 8-bit
    values as it reads). bf16 queries are left to the start-up check on the GPU: the
    interpreter's bf16 matrix product is not exact."""
    errors = run_json(KERNELS)
    assert set(errors) == {"prefill fp32", "prefill fp8", "decode fp32", "decode fp8", "prefill tiles"}
    assert max(errors.values()) < 1e-5, errors


ENGINE = """
import json, sys
from inference.engine import slot_attention, triton_decode, triton_prefill
from tests.node.test_engine_slots import PROMPTS, _engine, _run
model, new = sys.argv[1], [6, 10, 4, 8]
kw = dict(max_batch=3, bucketed=True, max_prefill_tokens=64, kv_cache_dtype="fp8")
reference = _run(_engine(model, attention="varlen", **kw), PROMPTS, new, True)
# what the engine picks on CUDA for an 8-bit store, here on the CPU: the Triton kernels
attention = triton_prefill.make_kernel(16, 16)
slot_attention.kernel_for = lambda device, dtype, store_dtype=None: (attention, "Triton attention (interpreted)")
slot_attention.decode_kernels = lambda *args, **kw: [triton_decode.make_kernel(32, 1)]
engine = _engine(model, **kw)
got = _run(engine, PROMPTS, new, True)
print(json.dumps({"equal": got == reference, "path": engine.attention_path, "prefill": engine.prefill_path,
                  "decode": engine._decode_default.label, "got": got, "reference": reference}))
"""


def test_the_engine_over_the_8_bit_store_through_the_triton_kernels_gives_the_reference_tokens(tiny_model_dir):
    """The engine as it runs on CUDA with ``--kv-cache-dtype fp8`` (the Triton attention
    kernel for prefill steps in the static shapes a graph captures, the Triton decode
    kernel for decode steps), here under Triton's interpreter, in one mixed batch: the same
    greedy tokens as the engine with the reference kernel over the same 8-bit store."""
    out = run_json(ENGINE, str(tiny_model_dir))
    assert out["path"] == "Triton attention (interpreted); decode: Triton decode (32-key tiles, 1 warps) at batch 1-3"
    assert out["decode"].startswith("Triton decode") and out["prefill"].startswith("eager (static shapes")
    assert out["equal"], out
