"""Decode attention over the slot store: one dense masked SDPA call against the
variable-length kernel, per batch size, on rows of mixed lengths.

Why: the engine's decode step used to read every row up to the batch's longest row (rounded
up to a width bucket) through one masked SDPA call; the variable-length kernel
(``inference/engine/slot_attention.py``) reads each row's own length. This probe times one
layer's attention both ways on the same store and the same rows, so the docs can say what
the choice is worth, and checks that both give the same output.

    python benchmarks/attention_probe.py --device cuda --out r.json   # DeepSeek-LLM-7B head shape

Rows: lengths drawn uniformly from ``--lengths`` (prompts of 64-512 tokens with up to 256
generated, as in ``serve_bench``); ``masked``: the engine's masked path (a view of the first
``width`` columns, additive mask; SDPA picks its kernel, cuDNN included, as decode steps
do); ``kernels``: the variable-length kernel (FlashAttention on CUDA, the SDPA reference on the
CPU) and every decode kernel the engine would time at start-up
(``slot_attention.decode_kernels``: FlashAttention's split-KV path and cuDNN's where this
PyTorch build has them, the Triton kernel's variants), each with
its difference from the masked output; ``live_gb_s``: the live keys and values read, per
second of that kernel; ``masked_gb_s``: the padded width read, per second of the masked call.
Median of ``--repeat`` timings (device events on CUDA, each over ten replays of the call
captured as a CUDA graph, as the engine's decode steps run it) after a warm-up. ``--kv-fp8``: each
Triton variant also over 8-bit (e4m3) copies of the keys and values, to size what an 8-bit
KV store would save (the difference from the masked output shows what it costs).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from inference.engine import slot_attention  # noqa: E402
from inference.engine.slot_cache import SlotKVCache  # noqa: E402
from inference.engine.transformers_cb import bucket_for, buckets  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--max-model-len", type=int, default=832)
    ap.add_argument("--lengths", type=int, nargs=2, default=[64, 768])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--kernels", nargs="+", help="time only the kernels whose label contains one of these")
    ap.add_argument("--triton-variants", nargs="+", metavar="TILE:WARPS[:RANGE[:STAGES[:MMA[:HEADS_FIRST]]]]",
                    help="Triton decode kernel variants to time instead of the engine's (e.g. 64:4 32:1:128 16:1:0:4 32:2:0:0:1:1)")
    ap.add_argument("--kv-fp8", action="store_true",
                    help="also time each Triton kernel over 8-bit (e4m3) copies of the keys and values")
    ap.add_argument("--out")
    args = ap.parse_args()

    device = torch.device(args.device)
    if args.triton_variants and device.type == "cuda":
        from inference.engine import triton_decode

        triton_decode.VARIANTS[:] = [tuple(int(x) for x in v.split(":")) for v in args.triton_variants]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kernel, why = slot_attention.kernel_for(device, dtype)
    if kernel is None:
        kernel, why = slot_attention.reference_varlen, "reference (SDPA per sequence)"
    slots = max(args.batches)
    store = SlotKVCache(1, args.kv_heads, args.head_dim, dtype, device, slots, args.max_model_len)
    g = torch.Generator(device="cpu").manual_seed(0)
    torch.manual_seed(0)
    for t in store.keys + store.values:
        t.normal_()  # on the device: a CPU draw of a 256-slot store takes minutes
    rng = random.Random(0)
    widths = buckets(args.max_model_len, min(256, args.max_model_len))
    bytes_per_token = 2 * args.kv_heads * args.head_dim * store.keys[0].element_size()
    rows_out = []
    for b in args.batches:
        lengths = [rng.randint(*args.lengths) for _ in range(b)]
        pos = torch.tensor(lengths, device=device).unsqueeze(1) - 1  # the query is each row's last token
        width = bucket_for(max(lengths), widths)
        q = torch.randn(b, args.heads, 1, args.head_dim, generator=g).to(device, dtype)
        scale = args.head_dim ** -0.5
        k = store.keys[0][:b, :width].transpose(1, 2)
        v = store.values[0][:b, :width].transpose(1, 2)
        mask = store.mask(pos, width)
        groups = args.heads // args.kv_heads

        def masked():
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=scale, enable_gqa=groups > 1)

        flat_q = q.transpose(1, 2).reshape(b, args.heads, args.head_dim)
        kernels = [k for k in [kernel] + slot_attention.decode_kernels(device, dtype, args.heads, args.kv_heads)
                   if not args.kernels or any(name in k.label for name in args.kernels)]

        def run(k, store_dtype=None):
            """A call of kernel ``k`` over the store, or over copies of its keys and values
            in ``store_dtype`` (8-bit: what an 8-bit KV store would make of this layer's
            attention; the Triton kernel widens each value to float32 as it loads it)."""
            att = store.decode_attention(k, b, pos, args.max_model_len)
            keys, values = att.keys[0], att.values[0]
            if store_dtype is not None:
                keys, values = keys.to(store_dtype), values.to(store_dtype)
            return lambda: att.kernel(flat_q, keys, values, att.cu_q, att.cu_k, att.used_k,
                                      att.max_q, att.max_k, att.causal, scale, pages=att.pages)

        # (label, kernel, store dtype, share of the bytes read): each kernel as the engine runs
        # it, and with --kv-fp8 each Triton variant over 8-bit keys and values too
        variants = [(k.label, k, None, 1) for k in kernels]
        if args.kv_fp8:
            variants += [(f"{k.label}, 8-bit keys and values", k, torch.float8_e4m3fn, 0.5)
                         for k in kernels if "Triton" in k.label]

        live = sum(lengths) * bytes_per_token
        with torch.inference_mode():
            want = masked().transpose(1, 2).reshape(b, args.heads, -1).float()
            t_masked = slot_attention.time_call(masked, device, args.repeat)
            row = {"batch": b, "width": width, "mean_length": sum(lengths) / b, "masked_ms": t_masked,
                   "masked_gb_s": b * width * bytes_per_token / t_masked / 1e6,
                   "padded_read_share": 1 - sum(lengths) / (b * width), "kernels": {}}
            for label, k, store_dtype, share in variants:
                try:
                    fn = run(k, store_dtype)
                    err = float((fn().float() - want).abs().max())
                    ms = slot_attention.time_call(fn, device, args.repeat)
                except Exception as exc:  # noqa: BLE001 - a kernel (or 8-bit load) this build lacks: say so
                    row["kernels"][label] = {"error": f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}"}
                    continue
                row["kernels"][label] = {"ms": ms, "live_gb_s": live * share / ms / 1e6, "max_abs_diff": err}
                print(f"batch {b}: {label}: {ms:.3f} ms, max abs diff {err:.4f}", file=sys.stderr, flush=True)
        best = min(((v["ms"], name) for name, v in row["kernels"].items() if "ms" in v), default=None)
        row["fastest"] = best and best[1]
        print(json.dumps(row), flush=True)
        rows_out.append(row)
    result = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "kernel": why,
              "torch": torch.__version__, "shape": vars(args), "rows": rows_out}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2), "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
