"""Decode-path check: the captured CUDA graphs against the eager step, on the architectures
the node must serve, and the time of one decode step per bucket.

For each model, three engines run the same greedy requests, each alone and all together in
one batch: the fast path (CUDA graphs and, on CUDA, the variable-length attention and fused
RMSNorms), the same kernels run eagerly with exact shapes (no bucket padding, and their own
per-step choice of attention), and transformers' own kernels (masked SDPA, its RMSNorm).
The fast engine also runs once with its graphs set aside, so the same shapes and the same
attention at every step run eagerly: what the graphs must reproduce token for token. The check
reports how many tokens agree position by position; since free-running greedy output parts
for good at the first near-tie, it also feeds the same tokens to the fast path and to
transformers' forward and compares the logits at every position (teacher-forced). Per
captured (batch, width) bucket: the replay against the eager step on rows holding real
prompts, and the time of each. Also runs on the CPU (no capture), as the test suite does.

    python benchmarks/decode_check.py --device cuda --models deepseek-7b qwen2-r1 llama3-r1 --out check.json

With ``--kv-cache-dtype fp8`` the fast engine keeps an 8-bit KV store and the other two the
model's dtype, so "alone" measures what the 8-bit store changes (``--models DIR`` checks a
model of your own).

The R1-distill shapes are the published configs of DeepSeek-R1-Distill-Qwen and -Llama
(Qwen2 with grouped-query attention and QKV bias; Llama 3 with its RoPE scaling), shrunk to
4 layers of width 256 with random weights and the tiny model's tokenizer.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.engine.slot_attention import relative_error  # noqa: E402
from inference.tiny_model import VARIANTS, make_variant  # noqa: E402

PROMPTS = ["请帮我生成本月销售报告摘要。", "退货" * 40, "How do I reset my password? " * 12,
           "订单 12345 的物流状态是什么？请详细说明每一步。" * 6]


async def greedy(engine, prompts: list[str], max_tokens: int, together: bool) -> list[list[int]]:
    """Greedy token ids per prompt (EOS ignored), all at once or one after another."""
    from inference.engine.base import GenerationRequest, SamplingParams

    async def one(i: int, prompt: str) -> list[int]:
        req = GenerationRequest(f"check-{i}", "m", [{"role": "user", "content": prompt}],
                                SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
        stream = await engine.generate(req)
        async for _ in stream:
            pass
        return list(engine.last_tokens.pop(req.request_id))

    if together:
        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))
    return [await one(i, p) for i, p in enumerate(prompts)]


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    same = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    total = sum(len(r) for r in a)
    prefix = [next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), len(ra)) for ra, rb in zip(a, b)]
    return {"tokens": total, "equal": same, "fraction": same / max(total, 1), "first_difference": prefix}


def bucket_logits_and_times(engine, reps: int = 10) -> list[dict]:
    """Per captured bucket: the replay against the eager step on rows that hold real
    prompts (relative max logit difference, argmax agreement), and the median time of one
    replay and one eager step (device events)."""
    import torch

    if not engine._graphs:
        return []
    kv, out = engine._kv, []
    g = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        for (rows, width, varlen), (graph, logits) in sorted(engine._graphs.items()):
            if width > kv.max_len or rows > kv.slots:
                continue
            length = min(width - 1, max(1, width // 2 + 7))
            for r in range(rows):  # fill each row with its own random prompt
                ids = torch.randint(0, engine.model.config.vocab_size, (length,), generator=g).tolist()
                engine._prefill_forward([(r, ids, 0)])
            engine._io[0, :rows] = torch.randint(0, engine.model.config.vocab_size, (rows,), generator=g).to(engine.device)
            engine._io[1, :rows] = length
            eager = engine._decode_forward(rows, width, varlen).float()
            graph.replay()
            replay = logits.float()
            err = relative_error(replay, eager)
            argmax = float((replay.argmax(-1) == eager.argmax(-1)).float().mean())
            times = {}
            for name, fn in (("replay_ms", graph.replay), ("eager_ms", lambda: engine._decode_forward(rows, width, varlen))):
                samples = []
                for _ in range(reps):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    t0 = time.perf_counter()
                    a.record()
                    fn()
                    b.record()
                    host = time.perf_counter() - t0
                    torch.cuda.synchronize()
                    samples.append((a.elapsed_time(b), host * 1e3))
                times[name] = statistics.median(s[0] for s in samples)
                times[name.replace("_ms", "_host_ms")] = statistics.median(s[1] for s in samples)
            out.append({"rows": rows, "width": width, "attention": "variable-length" if varlen else "masked",
                        "prompt_tokens": length, "rel_max_logit_diff": err,
                        "argmax_equal": argmax, **times})
    return out


def teacher_forced(engine, reference_model, prompt_ids: list[int], tokens: list[int]) -> dict:
    """Feed the same tokens to the engine's fast path (prefill, then one decode step per
    token as the running node does it: graph replay where captured) and to transformers'
    own forward over the whole sequence; compare the logits at every position. Free-running
    greedy output diverges for good at the first near-tie, so this is the per-step measure."""
    import torch

    with torch.inference_mode():
        n = len(prompt_ids)
        fast = [engine._prefill_forward([(0, prompt_ids, 0)])[0].float()]
        for i, token in enumerate(tokens[:-1]):
            engine._io[0, 0], engine._io[1, 0] = token, n + i
            fast.append(engine._decode_logits(*engine._decode_shape(1, n + i + 1, n + i + 1))[0].float().clone())
        got = torch.stack(fast)
        ids = torch.tensor([prompt_ids + tokens[:-1]], device=engine.device)
        want = reference_model(input_ids=ids).logits[0, n - 1:].float()
    rel = ((got - want).abs().amax(-1) / want.abs().amax(-1).clamp(min=1e-6))
    return {"positions": len(tokens), "argmax_equal": float((got.argmax(-1) == want.argmax(-1)).float().mean()),
            "rel_max_logit_diff_median": float(rel.median()), "rel_max_logit_diff_max": float(rel.max())}


async def check_model(model_dir: Path, device: str, max_tokens: int, max_batch: int, max_model_len: int,
                      kv_cache_dtype: str = "auto") -> dict:
    from inference.engine.transformers_cb import TransformersEngine

    kw = dict(device=device, max_model_len=max_model_len, max_prefill_tokens=256)
    small = dict(max_batch=8, kv_cache_tokens=8 * max_model_len)
    # the fast path: CUDA graphs and, on CUDA, the variable-length attention and fused norms
    # (with --kv-cache-dtype fp8, over the 8-bit store; the other two keep the model's dtype,
    # so "alone" is then the 8-bit store against the full one)
    fast = TransformersEngine(model_dir, cuda_graphs=device == "cuda", bucketed=True, max_batch=max_batch,
                              kv_cache_tokens=max_batch * max_model_len, kv_cache_dtype=kv_cache_dtype, **kw)
    # the same kernels, eagerly, with exact shapes: what the graphs must reproduce
    same = TransformersEngine(model_dir, cuda_graphs=False, bucketed=False, **small, **kw)
    # transformers' own kernels: masked SDPA and its RMSNorm (what a user would run)
    plain = TransformersEngine(model_dir, cuda_graphs=False, bucketed=False, attention="masked", fuse_norms=False,
                               fuse_rotary=False, fuse_residuals=False, **small, **kw)
    engines = (fast, same, plain)
    for e in engines:
        e.record_tokens = True
        await e.start()
    try:
        result = {"model": model_dir.name, "kv_cache_dtype": kv_cache_dtype,
                  "decode_path": fast.decode_path, "eager_path": same.decode_path,
                  "attention_path": fast.attention_path, "fused_norms": fast.fused_norms,
                  "fused_projections": fast.fused_projections, "fused_residuals": fast.fused_residuals}
        same_alone = await greedy(same, PROMPTS, max_tokens, together=False)
        fast_alone = await greedy(fast, PROMPTS, max_tokens, together=False)
        fast_batch = await greedy(fast, PROMPTS, max_tokens, together=True)
        # the fast engine itself with its graphs set aside: the same shapes and the same
        # choice of attention at every step, run eagerly (what each replay must reproduce)
        graphs = fast._graphs, fast._prefill_graphs
        fast._graphs, fast._prefill_graphs = {}, {}
        try:
            twin_alone = await greedy(fast, PROMPTS, max_tokens, together=False)
        finally:
            fast._graphs, fast._prefill_graphs = graphs
        result["graphs_against_own_eager"] = agreement(fast_alone, twin_alone)
        result["alone"] = agreement(fast_alone, same_alone)
        result["in_a_batch"] = agreement(fast_batch, same_alone)
        # the eager step in a batch, against itself alone: how much of a batch's difference
        # is the batch's own arithmetic (bf16 results depend on the batch shape), not the graphs
        result["eager_in_a_batch"] = agreement(await greedy(same, PROMPTS, max_tokens, together=True), same_alone)
        plain_alone = await greedy(plain, PROMPTS, max_tokens, together=False)
        result["against_transformers_kernels"] = agreement(fast_alone, plain_alone)
        result["teacher_forced"] = [
            teacher_forced(fast, plain.model, fast.encode_prompt([{"role": "user", "content": p}]), toks)
            for p, toks in zip(PROMPTS, plain_alone)]
        result["buckets"] = bucket_logits_and_times(fast) if device == "cuda" else []
    finally:
        for e in engines:
            await e.stop()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", nargs="+", default=["tiny", "qwen2-r1", "llama3-r1"],
                    help="tiny, deepseek-7b (made with make-tiny-model), qwen2-r1, llama3-r1, or a model folder")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--kv-cache-dtype", default="auto", help="the fast engine's KV store: auto or fp8")
    ap.add_argument("--work", default="/tmp/decode-check")
    ap.add_argument("--out")
    args = ap.parse_args()

    work = Path(args.work)
    tiny = work / "tiny"
    if not tiny.exists():
        subprocess.run([sys.executable, "-m", "seekwatch", "make-tiny-model", str(tiny)], check=True, stdout=subprocess.DEVNULL)
    results = []
    for name in args.models:
        if name in ("tiny", "deepseek-7b"):
            path = tiny if name == "tiny" else work / name
            if not path.exists():
                subprocess.run([sys.executable, "-m", "seekwatch", "make-tiny-model", str(path), "--size", name,
                                "--device", args.device], check=True, stdout=subprocess.DEVNULL)
        elif name in VARIANTS:
            path = work / name
            if not path.exists():
                make_variant(tiny, path, name)
        else:
            path = Path(name)
        t0 = time.monotonic()
        try:
            r = asyncio.run(check_model(path, args.device, args.max_tokens, args.max_batch, args.max_model_len,
                                        args.kv_cache_dtype))
        except Exception as exc:  # one model failing must not hide the others' results
            import traceback

            traceback.print_exc()
            r = {"model": name, "error": f"{exc.__class__.__name__}: {exc}"}
        r["seconds"] = round(time.monotonic() - t0, 1)
        print(json.dumps(r), flush=True)
        results.append(r)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2), "utf-8")
    for r in results:
        if "error" in r:
            print(f"{r['model']}: FAILED {r['error']}")
            continue
        worst = max((b["rel_max_logit_diff"] for b in r["buckets"]), default=float("nan"))
        tf = r["teacher_forced"]
        print(f"{r['model']}: {r['decode_path'][:40]}; {r['attention_path']}; greedy tokens of the graphs against "
              f"the same engine eagerly {r['graphs_against_own_eager']['fraction']:.3f}; equal alone "
              f"{r['alone']['fraction']:.3f}, in a batch {r['in_a_batch']['fraction']:.3f} (eager in a batch: "
              f"{r['eager_in_a_batch']['fraction']:.3f}; against transformers' kernels "
              f"{r['against_transformers_kernels']['fraction']:.3f}); worst bucket logit diff {worst:.3g}; "
              f"teacher-forced against transformers' forward: argmax equal "
              f"{min(t['argmax_equal'] for t in tf):.3f} (worst prompt), logit diff median "
              f"{statistics.median(t['rel_max_logit_diff_median'] for t in tf):.3g}, max "
              f"{max(t['rel_max_logit_diff_max'] for t in tf):.3g}")
        for b in r["buckets"]:
            print(f"  batch {b['rows']:>3} width {b['width']:>5} {b['attention']:>15}: replay {b['replay_ms']:.2f} ms "
                  f"(host {b['replay_host_ms']:.2f}), eager {b['eager_ms']:.2f} ms (host {b['eager_host_ms']:.2f}), "
                  f"diff {b['rel_max_logit_diff']:.2g}, argmax equal {b['argmax_equal']:.2f}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
