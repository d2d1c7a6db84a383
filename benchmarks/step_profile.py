"""Where one engine step's device time goes: the kernels of a decode step per batch size
and of a prefill step per token count, grouped by kind, and the matrix multiplies of the
model's shapes timed alone against the card's peak.

A decode step at full batch is a sum of kernel kinds (the projections' matrix multiplies,
attention over the live keys and values, the norms, rotary and activation kernels, the
output head and sampling); which kind holds the time says which change can pay. This runs
the node's own engine (``TransformersEngine``, as the node builds it) on rows holding
prompts of the workload's lengths, profiles a few graph replays and eager steps with
``torch.profiler``, and sums the device time per kernel kind.

    python benchmarks/step_profile.py --model /tmp/m/deepseek-7b --rows 1 64 256 --prefill 512 2048 --out profile.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Kernel-name fragments → kind, first match wins (lower case).
KINDS = [("attention", ("flash", "fmha", "attn", "_partial", "_merge", "_fwd_kernel", "paged", "cudnn")),
         ("rotary", ("rotary", "_rotate")), ("norm", ("rms", "norm")), ("silu", ("silu",)),
         ("gemm", ("gemm", "sm90", "cutlass", "cublas", "nvjet", "matmul", "xmma", "sgemm", "splitk")),
         ("sampling", ("argmax", "max_", "softmax", "topk", "sort", "multinomial", "exponential")),
         ("copy", ("copy", "index", "scatter", "gather", "cat", "fill"))]


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, parts in KINDS:
        if any(p in low for p in parts):
            return kind
    return "other"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def profile(fn, reps: int) -> dict:
    """Run ``fn`` ``reps`` times under the profiler; device microseconds per call, per kind
    and for the twelve costliest kernels (on the CPU, for a dry run: the CPU operators'
    own time)."""
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    cuda = torch.cuda.is_available()
    fn()
    sync()
    with torch_profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
        sync()
    per_kind, per_name, count = defaultdict(float), defaultdict(float), defaultdict(int)
    want = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    for ev in prof.events():
        if ev.device_type != want:
            continue
        us = ev.self_device_time_total if cuda else ev.self_cpu_time_total
        per_kind[kind_of(ev.name)] += us / reps
        per_name[ev.name] += us / reps
        count[ev.name] += 1
    top = sorted(per_name.items(), key=lambda kv: -kv[1])[:12]
    return {"total_us": round(sum(per_kind.values()), 1),
            "kinds_us": {k: round(v, 1) for k, v in sorted(per_kind.items(), key=lambda kv: -kv[1])},
            "top": [{"name": n[:110], "us": round(v, 1), "calls": count[n] // reps} for n, v in top]}


def timed(fn, reps: int = 20) -> float:
    """Median device milliseconds of one eager call of ``fn`` (wall time on the CPU): the
    calls timed here are whole graph replays and steps, long beside their launch."""
    import torch

    from inference.engine.slot_attention import time_call

    return time_call(fn, torch.device("cuda" if torch.cuda.is_available() else "cpu"), reps, graph=False)


def gemm_table(config, dtype, device, rows: list[int]) -> list[dict]:
    """The model's matrix multiplies (merged q/k/v, o, merged gate/up, down, the output
    head) alone at each row count: milliseconds, TFLOP/s and the weight bytes' GB/s."""
    import torch

    h, inter = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    shapes = {"qkv": (h, h + 2 * kv), "o": (h, h), "gate_up": (h, 2 * inter), "down": (inter, h),
              "lm_head": (h, config.vocab_size)}
    out = []
    for m in rows:
        for name, (k, n) in shapes.items():
            x = torch.randn(m, k, device=device, dtype=dtype)
            w = torch.randn(n, k, device=device, dtype=dtype)
            ms = timed(lambda: torch.nn.functional.linear(x, w))
            out.append({"rows": m, "matrix": name, "k": k, "n": n, "ms": round(ms, 4),
                        "tflops": round(2 * m * k * n / ms / 1e9, 1), "weight_gbs": round(2 * k * n / ms / 1e6, 1)})
    return out


#: Runtime calls that can hold the host (a wait for the device, or memory the driver hands out).
RUNTIME_WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
                 "cudaMemcpyAsync", "cudaHostAlloc", "cudaMallocHost", "cudaMalloc", "cudaFree", "cudaGraphLaunch",
                 "cudaLaunchKernel", "cuLaunchKernel", "cudaEventRecord", "cudaEventQuery", "cudaStreamWaitEvent")


async def live(engine, rows: int, window_s: float, lengths: tuple[int, int], seed: int, churn: bool = True) -> dict:
    """The running loop at ``rows`` rows: start as many long requests, wait until all of them
    decode, then profile ``window_s`` seconds of the engine thread: how much of the wall time
    the device is busy, how long the host sits in each CUDA runtime call, and every call that
    waits for the device (``torch.cuda.set_sync_debug_mode``), with the Python stack that
    made it."""
    import random
    import traceback
    import warnings

    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from inference.engine.base import GenerationRequest, SamplingParams

    rng = random.Random(seed)
    vocab_words = ["退货", "订单", "物流", "password", "reset", "销售", "报告", "summary"]

    async def drain(i: int) -> None:
        n = rng.randint(*lengths)
        prompt = " ".join(rng.choice(vocab_words) for _ in range(n // 2))
        req = GenerationRequest(f"live-{rows}-{i}", "m", [{"role": "user", "content": prompt}],
                                SamplingParams(temperature=0.7, max_tokens=engine.max_model_len - 2 * n - 64,
                                               ignore_eos=True))
        async for _ in await engine.generate(req):
            pass

    tasks = [asyncio.create_task(drain(i)) for i in range(rows)]
    deadline = time.monotonic() + 120
    while len(engine._running) < rows and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    seen: dict[str, int] = {}

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchronizing CUDA operation" not in str(message):  # the profiler's own notices
            return
        key = "".join(traceback.format_stack(limit=14)[:-1])
        seen[f"{message}\n{key}"] = seen.get(f"{message}\n{key}", 0) + 1

    cuda = torch.cuda.is_available()
    mem0 = torch.cuda.memory_stats() if cuda else {}
    host0 = torch.cuda.host_memory_stats() if cuda and hasattr(torch.cuda, "host_memory_stats") else {}
    old_show = warnings.showwarning
    warnings.showwarning = show
    warnings.simplefilter("always")
    def account() -> dict[str, float]:
        return {f: getattr(engine.step_stats, f) for f in ("steps", "forward_s", "sample_s", "emit_s")}

    before = account()
    if cuda:
        torch.cuda.set_sync_debug_mode("warn")
    t0 = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
        # a few streams end and new ones arrive during the window, so cancelling, prefill
        # and joining the batch are profiled too
        end, n = time.perf_counter() + window_s, rows
        while time.perf_counter() < end:
            await asyncio.sleep(min(0.25, max(end - time.perf_counter(), 0)))
            for t in tasks[-2:] if churn else []:
                t.cancel()
            tasks.extend(asyncio.create_task(drain(n + j)) for j in range(2 if churn else 0))
            n += 2
    wall = time.perf_counter() - t0
    if cuda:
        torch.cuda.set_sync_debug_mode("default")
    warnings.showwarning = old_show
    after = account()
    mem1 = torch.cuda.memory_stats() if cuda else {}
    host1 = torch.cuda.host_memory_stats() if cuda and hasattr(torch.cuda, "host_memory_stats") else {}
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    device_us, runtime = 0.0, defaultdict(lambda: [0, 0.0, 0.0])
    kinds = defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            device_us += ev.self_device_time_total
            kinds[kind_of(ev.name)] += ev.self_device_time_total
        elif any(ev.name.startswith(r) for r in RUNTIME_WAITS):
            r = runtime[ev.name]
            r[0] += 1
            r[1] += ev.cpu_time_total
            r[2] = max(r[2], ev.cpu_time_total)
    steps = after["steps"] - before["steps"]
    out = {"rows": rows, "running": len(engine._running), "window_s": round(wall, 3), "decode_steps": steps,
           "ms_per_step": round(wall / max(steps, 1) * 1e3, 2),
           "account_ms_per_step": {k: round((after[f] - before[f]) / max(steps, 1) * 1e3, 2)
                                   for k, f in (("forward", "forward_s"), ("sample_and_wait", "sample_s"),
                                                ("emit", "emit_s"))},
           "device_busy": round(device_us / 1e6 / wall, 3),
           "device_kinds_ms_per_step": {k: round(v / 1e3 / max(steps, 1), 2) for k, v in kinds.items()},
           "runtime_calls": {k: {"calls": v[0], "total_ms": round(v[1] / 1e3, 2), "max_ms": round(v[2] / 1e3, 2)}
                             for k, v in sorted(runtime.items(), key=lambda kv: -kv[1][1])},
           "alloc_retries": mem1.get("num_alloc_retries", 0) - mem0.get("num_alloc_retries", 0),
           "device_frees": mem1.get("num_device_free", 0) - mem0.get("num_device_free", 0),
           "device_allocs": mem1.get("num_device_alloc", 0) - mem0.get("num_device_alloc", 0),
           "host_allocs": host1.get("num_host_alloc", 0) - host0.get("num_host_alloc", 0),
           "syncs": [{"count": c, "where": w[:3000]} for w, c in sorted(seen.items(), key=lambda kv: -kv[1])[:8]]}
    deadline = time.monotonic() + 60
    while (engine._running or engine._prefilling) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return out


def stage_decode(engine, rows: int, held: list[int], vocab: int, g) -> tuple[int, int, bool]:
    """Put a decode step over rows ``0 … rows-1`` (holding ``held`` tokens each) in the
    engine's input buffers; returns its shape ``(rows, width, varlen)`` as the engine picks it."""
    import torch

    engine._io[0, :rows] = torch.randint(0, vocab, (rows,), generator=g).to(engine.device)
    engine._io[1, :rows] = torch.tensor(held, device=engine.device)
    return engine._decode_shape(rows, max(held) + 1, sum(held) + rows)


def prefill_chunks(tokens: int, vocab: int, g) -> list[tuple[int, list[int], int]]:
    """``tokens`` random prompt tokens as four prompts in slots 0-3, as a burst packs them."""
    import torch

    ids = torch.randint(0, vocab, (tokens,), generator=g).tolist()
    per = max(1, tokens // 4)
    return [(r, ids[i:i + per], 0) for r, i in enumerate(range(0, tokens, per))]


def overlap(engine, rows: int, held: list[int], tokens: int, vocab: int, g) -> dict:
    """A decode step's graph and a prefill step's graph, one after the other on one stream
    and side by side on two: what running prefill beside decode (compute-bound matrix
    multiplies beside bandwidth-bound attention) would save. Timing only. The two graphs
    are captured here, each in a memory pool of its own: the engine's graphs share one
    pool, and replayed side by side they would overwrite each other's intermediate values,
    among them the lengths the attention kernels loop over; and on capture streams of their
    own, so that their matrix multiplies do not share one cuBLAS workspace (see
    ``TransformersEngine._capture``: two versions without this never finished on an H200).
    Both still write the same KV store; the values written do not change what the kernels
    do. Measured on an H200 (2026-12-02): side by side saved -3 % to +3 % of the time in
    turn, at 64 and 256 rows beside 702 and 2,048 prefill tokens."""
    import torch

    shape = stage_decode(engine, rows, held, vocab, g)
    bucket = engine._stage_prefill(prefill_chunks(tokens, vocab, g), tokens)
    if shape not in engine._graphs or bucket not in engine._prefill_graphs:
        return {"rows": rows, "prefill_tokens": tokens, "skipped": "no captured graph for this shape"}
    decode, _ = engine._capture(lambda: engine._decode_forward(*shape), torch.cuda.graph_pool_handle())
    prefill, _ = engine._capture(lambda: engine._prefill_static(bucket), torch.cuda.graph_pool_handle(),
                                 # a cuBLAS workspace of its own; high priority, as PyTorch hands out its
                                 # normal-priority streams round-robin from a pool that also holds its
                                 # default capture stream
                                 stream=torch.cuda.Stream(priority=-1))
    side = torch.cuda.Stream()
    main = torch.cuda.current_stream()

    def together():
        side.wait_stream(main)
        with torch.cuda.stream(side):
            prefill.replay()
        decode.replay()
        main.wait_stream(side)

    times = {"decode_ms": timed(decode.replay), "prefill_ms": timed(prefill.replay),
             "in_turn_ms": timed(lambda: (decode.replay(), prefill.replay())), "side_by_side_ms": timed(together)}
    return {"rows": rows, "prefill_tokens": tokens, "prefill_bucket": bucket,
            **{k: round(v, 3) for k, v in times.items()},
            "saved": round(1 - times["side_by_side_ms"] / times["in_turn_ms"], 3)}


async def run(args) -> dict:
    import torch

    from inference.engine.transformers_cb import TransformersEngine

    engine = TransformersEngine(args.model, device=args.device, max_batch=max(args.rows + args.live), max_queue=4096,
                                max_model_len=args.max_model_len, kv_cache_dtype=args.kv_cache_dtype,
                                attention="varlen" if args.kv_cache_dtype != "auto" else "auto")
    await engine.start()
    result = {"kv_cache_dtype": args.kv_cache_dtype, "decode_path": engine.decode_path, "prefill_path": engine.prefill_path,
              "attention_path": engine.attention_path, "decode": [], "prefill": []}
    g = torch.Generator().manual_seed(5)
    vocab = engine.model.config.vocab_size
    try:
        if args.live:
            result["live"] = []
            for rows in args.live:
                entry = await live(engine, rows, args.window, tuple(args.lengths), rows)
                result["live"].append(entry)
                print(json.dumps({k: v for k, v in entry.items() if k != "syncs"}), flush=True)
                for s in entry["syncs"]:
                    print(f"sync x{s['count']}: {s['where']}", flush=True)
            return result
        with torch.inference_mode():
            rows_max = max(args.rows)
            lengths = torch.randint(args.lengths[0], args.lengths[1] + 1, (rows_max,), generator=g).tolist()
            for r, n in enumerate(lengths):  # every row holds its own prompt
                ids = torch.randint(0, vocab, (n,), generator=g).tolist()
                for start in range(0, n, 512):
                    engine._prefill_forward([(r, ids[start:start + 512], start)])
            sync()
            for rows in args.rows:
                held = lengths[:rows]
                shape = stage_decode(engine, rows, held, vocab, g)
                entry = {"rows": rows, "live_tokens": sum(held) + rows, "shape": list(shape),
                         "kernel": str(engine._decode_kernel(shape[0])) if shape[2] else "masked"}
                if shape in engine._graphs:
                    entry["replay_ms"] = round(timed(lambda: engine._decode_logits(*shape)), 3)
                    entry["replay"] = profile(lambda: engine._decode_logits(*shape), args.reps)
                entry["eager"] = profile(lambda: engine._decode_forward(*shape), args.reps)
                result["decode"].append(entry)
                print(json.dumps({k: v for k, v in entry.items() if k not in ("eager",)}), flush=True)
            for tokens in args.prefill:
                chunks = prefill_chunks(tokens, vocab, g)
                ms = timed(lambda: engine._prefill_forward(chunks), reps=10)
                entry = {"tokens": tokens, "chunks": len(chunks), "ms": round(ms, 3),
                         "tokens_per_s": round(tokens / ms * 1e3),
                         "profile": profile(lambda: engine._prefill_forward(chunks), max(2, args.reps // 2))}
                result["prefill"].append(entry)
                print(json.dumps({k: v for k, v in entry.items() if k != "profile"}), flush=True)
            if args.overlap and engine.device.type == "cuda":
                result["overlap"] = []
                for rows in [r for r in args.rows if r >= 8]:
                    for tokens in args.prefill:  # each printed as it comes: the probe has hung before
                        print(f"overlap: {rows} rows beside {tokens} prefill tokens", flush=True)
                        result["overlap"].append(overlap(engine, rows, lengths[:rows], tokens, vocab, g))
                        print(json.dumps(result["overlap"][-1]), flush=True)
        result["gemm"] = gemm_table(engine.model.config, engine.dtype, engine.device, sorted(set(args.rows) | set(args.prefill)))
    finally:
        await engine.stop()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--prefill", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--lengths", type=int, nargs=2, default=[64, 768], help="prompt tokens per row, drawn uniformly")
    ap.add_argument("--max-model-len", type=int, default=832)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--device", default="cuda", help="cuda; cpu only for a dry run of the script")
    ap.add_argument("--live", type=int, nargs="+", default=[],
                    help="instead: profile the running engine loop at these numbers of streams")
    ap.add_argument("--overlap", action="store_true",
                    help="also time each decode graph (8 rows and up) with each prefill graph in turn "
                         "and side by side on two streams (CUDA)")
    ap.add_argument("--window", type=float, default=2.0, help="seconds profiled per --live figure")
    ap.add_argument("--kv-cache-dtype", default="auto", help="the engine's KV store: auto or fp8")
    ap.add_argument("--out")
    args = ap.parse_args()
    t0 = time.monotonic()
    result = asyncio.run(run(args))
    result["seconds"] = round(time.monotonic() - t0, 1)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text, "utf-8")
    for d in result.get("live", []):
        print(f"live {d['rows']:>3} rows: {d['ms_per_step']} ms per step, device busy {d['device_busy']:.0%}, "
              f"account {d['account_ms_per_step']}; runtime: "
              + ", ".join(f"{k} {v['calls']}x {v['total_ms']} ms" for k, v in list(d["runtime_calls"].items())[:6]))
    for d in result["decode"]:
        for key in ("replay", "eager"):
            if key in d:
                p = d[key]
                print(f"decode {d['rows']:>3} rows {key:>6}: {p['total_us'] / 1e3:.2f} ms  "
                      + "  ".join(f"{k} {v / 1e3:.2f}" for k, v in p["kinds_us"].items()))
    for p in result["prefill"]:
        q = p["profile"]
        print(f"prefill {p['tokens']:>5} tokens: {p['ms']:.2f} ms ({p['tokens_per_s']} tok/s)  "
              + "  ".join(f"{k} {v / 1e3:.2f}" for k, v in q["kinds_us"].items()))
    for gm in result.get("gemm", []):
        print(f"gemm {gm['rows']:>5} x {gm['matrix']:>8}: {gm['ms']:.3f} ms {gm['tflops']:>6} TFLOP/s {gm['weight_gbs']:>7} GB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
