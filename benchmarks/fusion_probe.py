"""The device time the fusions save, each beside the form it replaced, as CUDA graph replays
(what the engine's steps are), on one GPU:

* **Sampling** (``inference.engine.fused_sampling``): ``sample_next_tokens`` in its plain
  form (float32 copy, temperature, softmax, exponential draws, ``argmax(p / q)``) and with
  the one-pass kernel, at 1, 64 and 256 rows of DeepSeek-LLM-7B's 102,400 logits in bf16,
  temperature 0.7 and EOS suppressed (the serving benchmark's requests: ``ignore_eos``).
* **Residual adds** (``inference.engine.fused_residual``): the 7B shape's ``o_proj``
  (4,096 → 4,096) and ``down_proj`` (11,008 → 4,096) products followed by the add, against
  the same products added in place (``addmm_``), 30 layers of each per graph, at 1, 64 and
  256 rows and a 1,344-token prefill chunk.

* **RMSNorm** (``inference.engine.fused_norm``): transformers' ``LlamaRMSNorm`` as it is,
  ``F.rms_norm`` and the Triton kernel, 61 norms of 4,096 per graph (a decode step's), at
  1, 64 and 256 rows and the prefill chunk; with each form's bit differences from the module.
* **The decode step's key/value writes** (``inference.engine.triton_decode`` with ``new``):
  one layer's decode attention at 1, 64 and 256 rows of 64-768 live tokens (the engine's
  kernel at that batch), its new keys and values written first by two ``index_copy_`` calls,
  against the kernel writing them itself; 30 layers per graph, with both forms' outputs and
  stores compared.
* **Longest rows first** (``order`` of the Triton decode kernel): one layer's decode
  attention with its sequences launched in launch order and longest first.

It also checks the compiled kernel, which the test suite can only run under Triton's
interpreter: greedy rows give ``argmax`` at every shape timed (with and without EOS
suppressed), and 100,000 draws over 8 tokens fit ``softmax(logits / T)`` (chi-square, with
the plain form's draws beside it).

    python benchmarks/fusion_probe.py --out benchmarks/results/h200-<date>-fusion-probe.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.engine import fused_sampling  # noqa: E402
from inference.engine.base import SamplingParams  # noqa: E402
from inference.engine.sampling import sample_next_tokens  # noqa: E402
from inference.engine.slot_attention import time_call  # noqa: E402

VOCAB = 102_400
EOS = [100_001]
HIDDEN, INTERMEDIATE, LAYERS = 4096, 11008, 30


def replay_ms(fn) -> float:
    """Median device time of one ``fn`` captured as a CUDA graph (ms per replay), timed as the
    engine times its attention kernels at start-up."""
    return time_call(fn, torch.device("cuda"), repeat=7)


def sampling(rows_list: list[int]) -> list[dict]:
    out = []
    g = torch.Generator().manual_seed(0)
    for rows in rows_list:
        logits = (torch.randn(rows, VOCAB, generator=g) * 3).to("cuda", torch.bfloat16)
        params = [SamplingParams(temperature=0.7, max_tokens=8, ignore_eos=True)] * rows
        gen = [[]] * rows
        plain = replay_ms(lambda: sample_next_tokens(logits, params, gen, EOS, to_host=False, fused=False))
        fused = replay_ms(lambda: sample_next_tokens(logits, params, gen, EOS, to_host=False))
        greedy = [SamplingParams(temperature=0.0, max_tokens=8)] * rows
        suppressed = [SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)] * rows
        masked = logits.float().index_fill(1, torch.tensor(EOS, device="cuda"), float("-inf"))
        out.append({
            "rows": rows, "plain_ms": round(plain, 4), "one_pass_ms": round(fused, 4),
            "greedy_equals_argmax": torch.equal(sample_next_tokens(logits, greedy, gen, EOS, to_host=False),
                                                logits.float().argmax(1)),
            "greedy_with_eos_suppressed_equals_argmax": torch.equal(
                sample_next_tokens(logits, suppressed, gen, EOS, to_host=False), masked.argmax(1)),
        })
        print(json.dumps(out[-1]), flush=True)
    return out


def distribution(draws: int = 100_000, temperature: float = 0.7) -> dict:
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0, 1.5, -3.0, 0.2])
    probs = torch.softmax(logits / temperature, -1)
    batch = logits.repeat(draws, 1).to("cuda", torch.bfloat16)
    params = [SamplingParams(temperature=temperature, max_tokens=8)] * draws
    result = {"draws": draws, "tokens": 8, "degrees_of_freedom": 7, "chi2_0.1pct_tail": 24.32}
    for name, fused in (("one_pass", True), ("plain", False)):
        tokens = sample_next_tokens(batch, params, [[]] * draws, [], to_host=True, fused=fused)
        counts = torch.bincount(tokens, minlength=8).double()
        want = probs.double() * draws
        result[f"chi2_{name}"] = round(float(((counts - want) ** 2 / want).sum()), 2)
    print(json.dumps(result), flush=True)
    return result


def residual(rows_list: list[int]) -> list[dict]:
    out = []
    g = torch.Generator().manual_seed(1)
    o_w = (torch.randn(HIDDEN, HIDDEN, generator=g) / 64).to("cuda", torch.bfloat16)
    down_w = (torch.randn(HIDDEN, INTERMEDIATE, generator=g) / 100).to("cuda", torch.bfloat16)
    for rows in rows_list:
        x = torch.randn(rows, HIDDEN, generator=g).to("cuda", torch.bfloat16)
        attn = torch.randn(rows, HIDDEN, generator=g).to("cuda", torch.bfloat16)
        act = torch.randn(rows, INTERMEDIATE, generator=g).to("cuda", torch.bfloat16)
        h = x.clone()

        def separate():
            y = x
            for _ in range(LAYERS):
                y = y + F.linear(attn, o_w)
                y = y + F.linear(act, down_w)
            return y

        def in_place():
            h.copy_(x)  # one copy per graph so every replay starts from the same values
            for _ in range(LAYERS):
                h.addmm_(attn, o_w.t())
                h.addmm_(act, down_w.t())
            return h

        a, b = separate(), in_place()
        err = float((a.float() - b.float()).abs().max() / a.float().abs().max())
        out.append({"rows": rows, "product_then_add_ms": round(replay_ms(separate), 4),
                    "add_in_the_product_ms": round(replay_ms(in_place), 4), "layers": LAYERS,
                    "relative_difference": round(err, 5)})
        print(json.dumps(out[-1]), flush=True)
    return out


def norms(rows_list: list[int], count: int = 2 * LAYERS + 1) -> list[dict]:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from inference.engine import fused_norm

    out = []
    g = torch.Generator().manual_seed(2)
    module = LlamaRMSNorm(HIDDEN, eps=1e-6).to("cuda", torch.bfloat16)
    module.weight.data = (torch.randn(HIDDEN, generator=g) * 0.3 + 1).to("cuda", torch.bfloat16)
    forms = {"transformers": lambda x: module(x),
             "F.rms_norm": lambda x: fused_norm.FORWARDS[fused_norm.TORCH](module, x),
             "triton": lambda x: fused_norm.FORWARDS[fused_norm.TRITON](module, x)}
    for rows in rows_list:
        x = (torch.randn(rows, HIDDEN, generator=g) * 3).to("cuda", torch.bfloat16)
        want = module(x)
        row = {"rows": rows, "norms_per_graph": count}
        for name, fn in forms.items():
            row[f"{name}_ms"] = round(replay_ms(lambda fn=fn: [fn(x) for _ in range(count)]), 4)
            row[f"{name}_values_differing_from_the_module"] = int((fn(x) != want).sum())
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def kv_writes(rows_list: list[int], max_len: int = 832) -> list[dict]:
    from inference.engine import slot_attention, triton_decode
    from inference.engine.slot_cache import SlotKVCache

    out = []
    g = torch.Generator().manual_seed(3)
    heads, dim = 32, 128
    kernel = triton_decode.make_kernel(32, 2, 0, 0, True, True)  # the engine's pick at 64-256 rows (run 27)
    for rows in rows_list:
        store = SlotKVCache(LAYERS, heads, dim, torch.bfloat16, torch.device("cuda"), rows, max_len)
        for t in store.keys + store.values:
            t.normal_()
        lengths = torch.randint(64, 769, (rows,), generator=g)
        pos = (lengths - 1).unsqueeze(1).cuda()
        write = store.write_index(torch.arange(rows, device="cuda"), pos)
        att = store.decode_attention(kernel, rows, pos, max_len, write)
        q = torch.randn(rows, heads, dim, generator=g).to("cuda", torch.bfloat16)
        new = [tuple(torch.randn(rows, heads, dim, generator=g).to("cuda", torch.bfloat16) for _ in range(2))
               for _ in range(LAYERS)]
        scale = dim ** -0.5

        def first_then_attend():
            for layer in range(LAYERS):
                slot_attention.write_new(att.keys[layer], att.values[layer], *new[layer], att.write)
                kernel(q, att.keys[layer], att.values[layer], att.cu_q, att.cu_k, att.used_k, 1, max_len, False,
                       scale)

        def written_by_the_kernel():
            for layer in range(LAYERS):
                slot_attention.attend(att, layer, q, scale, new[layer])

        before = [t.clone() for t in store.keys[:1] + store.values[:1]]
        a = slot_attention.attend(att, 0, q, scale, new[0])
        after_fused = [t.clone() for t in store.keys[:1] + store.values[:1]]
        store.keys[0].copy_(before[0])
        store.values[0].copy_(before[1])
        slot_attention.write_new(att.keys[0], att.values[0], *new[0], att.write)
        b = kernel(q, att.keys[0], att.values[0], att.cu_q, att.cu_k, att.used_k, 1, max_len, False, scale)
        row = {"rows": rows, "live_tokens": int(lengths.sum()), "layers_per_graph": LAYERS, "kernel": kernel.label,
               "writes_then_attention_ms": round(replay_ms(first_then_attend), 4),
               "written_by_the_attention_ms": round(replay_ms(written_by_the_kernel), 4),
               "outputs_relative_difference": float((a.float() - b.float()).abs().max() / b.float().abs().max()),
               "stores_equal": bool(torch.equal(after_fused[0], store.keys[0])
                                    and torch.equal(after_fused[1], store.values[0]))}
        del store
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def row_order(rows_list: list[int], max_len: int = 832) -> list[dict]:
    """The decode kernel with its sequences launched longest first (``order``) against launch
    order, on rows of 64-768 live tokens: the last programs to start are then short ones, so
    fewer multiprocessors wait on one long sequence at the end of the launch. Also the order
    computed inside the graph (``argsort`` of the lengths), to see that it captures and what
    it costs."""
    from inference.engine import triton_decode
    from inference.engine.slot_cache import SlotKVCache

    out = []
    g = torch.Generator().manual_seed(4)
    heads, dim = 32, 128
    kernel = triton_decode.make_kernel(32, 2, 0, 0, True, True)
    for rows in rows_list:
        store = SlotKVCache(1, heads, dim, torch.bfloat16, torch.device("cuda"), rows, max_len)
        store.keys[0].normal_()
        store.values[0].normal_()
        lengths = torch.randint(64, 769, (rows,), generator=g)
        pos = (lengths - 1).unsqueeze(1).cuda()
        att = store.decode_attention(kernel, rows, pos, max_len)
        q = torch.randn(rows, heads, dim, generator=g).to("cuda", torch.bfloat16)
        order = torch.argsort(att.used_k, descending=True).to(torch.int32)
        args = (q, att.keys[0], att.values[0], att.cu_q, att.cu_k, att.used_k, 1, max_len, False, dim ** -0.5)
        plain = kernel(*args)
        ordered = kernel(*args, order=order)
        row = {"rows": rows, "live_tokens": int(lengths.sum()), "kernel": kernel.label,
               "launch_order_ms": round(replay_ms(lambda: kernel(*args)), 4),
               "longest_first_ms": round(replay_ms(lambda: kernel(*args, order=order)), 4),
               "outputs_equal": bool(torch.equal(plain, ordered))}
        try:
            row["longest_first_sorted_in_the_graph_ms"] = round(replay_ms(lambda: kernel(
                *args, order=torch.argsort(att.used_k, descending=True).to(torch.int32))), 4)
        except Exception as exc:  # noqa: BLE001 - the measurement says what failed
            row["longest_first_sorted_in_the_graph_ms"] = f"{exc.__class__.__name__}: {exc}"
        del store
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


PARTS = ("sampling", "residual", "norm", "kv", "order")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--prefill-tokens", type=int, default=1344)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--out", help="JSON results")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("fusion_probe.py needs a CUDA device", file=sys.stderr)
        return 2
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if "sampling" in args.parts:
        result |= {"kernel_block": fused_sampling.BLOCK, "sampling": sampling(args.rows),
                   "distribution": distribution()}
    if "residual" in args.parts:
        result["residual"] = residual([*args.rows, args.prefill_tokens])
    for part, key, run in (("norm", "norm", lambda: norms([*args.rows, args.prefill_tokens])),
                           ("kv", "kv_writes", lambda: kv_writes(args.rows)),
                           ("order", "row_order", lambda: row_order(args.rows))):
        if part in args.parts:
            try:
                result[key] = run()
            except Exception as exc:  # noqa: BLE001 - one part's failure is its result; the others still run
                result[key] = {"error": f"{exc.__class__.__name__}: {exc}"}
                print(json.dumps({key: result[key]}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
