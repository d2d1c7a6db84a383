"""Where one prefill step's time goes: the engine's packed slot-cache forward against the
model's own causal forward over the same number of tokens, per step size.

Why: on the H200 (2026-12-01) a prefill step of the node cost 77 ms for 389 tokens and
110 ms for 2,000 on the DeepSeek-LLM-7B shape, and at 64 and 256 streams prefill took
about half the engine's time. This probe separates the fixed cost of an eager forward
(host time spent launching kernels) from the work that grows with the tokens, and shows,
with ``--profile``, which operators take the time; the same code runs on the CPU.

    python benchmarks/prefill_probe.py                                  # tiny shape, CPU
    python benchmarks/prefill_probe.py --size deepseek-7b --device cuda --profile --out r.json

Rows, per step size T (tokens, split over ``--prompts`` prompts packed into one step):
``packed``: the engine's ``_prefill_forward`` (slot store, 4-D mask, logits of each
prompt's last token); ``causal``: ``model(input_ids[1, T], logits_to_keep=1)`` with no cache
and no mask (transformers' own causal attention), the floor for the same matrix work.
``new_keys``: ``packed`` with the last prompt starting 16 positions further on each call,
so the attention's key count is new every call, as in the engine; ``new_keys_any_kernel``:
the same with SDPA free to pick any kernel (the engine keeps cuDNN's out of prefill steps:
``PREFILL_SDPA_BACKENDS`` in ``inference/engine/transformers_cb.py`` says why). ``host`` is the time until the call returns (kernels launched), ``total`` until the device
is done. Median of ``--repeat`` runs after one warm-up per shape.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from inference.engine.slot_cache import SlotKVCache  # noqa: E402
from inference.engine import transformers_cb as tcb  # noqa: E402
from inference.engine.transformers_cb import TransformersEngine  # noqa: E402
from inference.tiny_model import DEEPSEEK_7B, TINY  # noqa: E402

SHAPES = {"tiny": (TINY, 4096), "deepseek-7b": (DEEPSEEK_7B, 102400)}


def build(size: str, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape, vocab = SHAPES[size]
    cfg = LlamaConfig(**shape, vocab_size=vocab, rms_norm_eps=1e-6, rope_theta=10000.0)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model.eval()


def packed_chunks(n: int, prompts: int) -> list[tuple[int, list[int], int]]:
    """``n`` tokens split over ``min(prompts, n)`` prompts from position 0, one slot each
    (the last prompt takes the rest), as ``_prefill_forward`` takes them."""
    k = min(prompts, n)
    sizes = [n // k] * (k - 1) + [n - (n // k) * (k - 1)]
    return [(slot, [7] * size, 0) for slot, size in enumerate(sizes)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int) -> dict:
    fn()
    sync(device)
    host, total = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        host.append(time.perf_counter() - t0)
        sync(device)
        total.append(time.perf_counter() - t0)
    return {"host_ms": statistics.median(host) * 1e3, "total_ms": statistics.median(total) * 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, nargs="+", default=[64, 384, 1024, 2048])
    ap.add_argument("--prompts", type=int, default=5, help="prompts packed into one step (the last gets the rest)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="torch.profiler tables for the largest packed step")
    ap.add_argument("--out", help="JSON results")
    args = ap.parse_args()

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = build(args.size, device, dtype)
    print(f"model {args.size} on {device} ({dtype}) built in {time.perf_counter() - t0:.1f}s; "
          f"torch {torch.__version__}", flush=True)
    longest = max(args.tokens)
    store = SlotKVCache.for_model(model.config, dtype, device, slots=args.prompts,
                                  max_len=longest + 16 * (args.repeat + 2) + 64)
    params = inspect.signature(model.forward).parameters  # as the engine picks them
    engine = SimpleNamespace(_kv=store, device=device, model=model,
                             _cache_kw="cache" if "cache" in params else "past_key_values",
                             _keep_kw={"logits_to_keep": 1}, _varlen=None, _static_prefill=False)  # the masked path
    prefill = TransformersEngine._prefill_forward.__get__(engine)
    shipped_attention = tcb.prefill_attention
    rows = []
    with torch.inference_mode():
        for n in args.tokens:
            chunks = packed_chunks(n, args.prompts)
            k = len(chunks)
            ids = torch.full((1, n), 7, device=device)
            packed = timed(lambda: prefill(chunks), device, args.repeat)
            causal = timed(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1), device, args.repeat)
            row = {"tokens": n, "prompts": k, "packed": packed, "causal": causal}
            # In the engine the key count changes from step to step (prompts continue at
            # other positions): here the last prompt starts 16 columns further each call.
            for name, shipped in (("new_keys", True), ("new_keys_any_kernel", False)):
                shift = iter(range(16, 10**6, 16))
                moved = lambda: prefill(chunks[:-1] + [(chunks[-1][0], chunks[-1][1], next(shift))])  # noqa: E731
                if not shipped:  # SDPA free to pick any kernel (cuDNN's on Hopper), as before
                    tcb.prefill_attention = lambda device: contextlib.nullcontext()
                try:
                    row[name] = timed(moved, device, args.repeat)
                finally:
                    tcb.prefill_attention = shipped_attention
            rows.append(row)
            print(f"T={n:5d} ({k} prompts)  " + "   ".join(
                f"{key} host {row[key]['host_ms']:6.1f} total {row[key]['total_ms']:6.1f} ms"
                for key in ("packed", "new_keys", "new_keys_any_kernel", "causal")), flush=True)
        tables = {}
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            chunks = packed_chunks(longest, args.prompts)
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=acts) as prof:
                for _ in range(3):
                    prefill(chunks)
                sync(device)
            avg = prof.key_averages()
            tables["by_self_cpu"] = avg.table(sort_by="self_cpu_time_total", row_limit=18)
            print(tables["by_self_cpu"], flush=True)
            if device.type == "cuda":
                tables["by_self_device"] = avg.table(sort_by="self_cuda_time_total", row_limit=18)
                print(tables["by_self_device"], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"size": args.size, "device": str(device), "torch": torch.__version__,
                                              "rows": rows, "tables": tables}, indent=2), "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
