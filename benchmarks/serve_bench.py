"""Serving benchmark: N concurrent streaming clients through the node's HTTP API, beside the
sequential baseline (one ``model.generate`` per request, in turn: the plain transformers loop), in one run.

Reports TTFT, TPOT and end-to-end percentiles, aggregate generated tokens/s, and the ratio of
the node's throughput to the baseline's. Results go to stdout as a markdown table, to
``benchmarks/results/<device>-<date>.json``, and with ``--write-docs`` into the marked section of
``docs/benchmarks.md``.

    python benchmarks/serve_bench.py                       # CPU, tiny model, 1/4/16 streams
    python benchmarks/serve_bench.py --size deepseek-7b --device cuda --concurrency 1 64 256
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seekwatch.node_process import start_node  # noqa: E402  (the same launcher the tests use)

CORPUS = (ROOT / "inference" / "data" / "tiny_corpus.txt").read_text("utf-8").splitlines()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def make_prompt(rng: random.Random, tokenizer, target_tokens: int) -> str:
    """Text of about ``target_tokens`` tokens, built from the bundled support corpus."""
    parts, n = [], 0
    while n < target_tokens:
        line = rng.choice(CORPUS)
        parts.append(line)
        n += len(tokenizer.encode(line, add_special_tokens=False))
    return "\n".join(parts)


async def one_stream(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> dict:
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "ignore_eos": True, "stream": True, "temperature": 0.7,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return {"error": r.status_code}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    e2e = time.perf_counter() - t0
    ttft = ttft if ttft is not None else e2e
    return {"ttft": ttft, "e2e": e2e, "tokens": tokens,
            "tpot": (e2e - ttft) / (tokens - 1) if tokens > 1 else 0.0}


async def run_scenario(base_url: str, prompts: list[str], max_tokens: list[int], concurrency: int,
                       poisson_rate: float | None = None) -> dict:
    limits = httpx.Limits(max_connections=concurrency + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        sem = asyncio.Semaphore(concurrency)

        async def guarded(i):
            async with sem:
                return await one_stream(client, prompts[i], max_tokens[i])

        t0 = time.perf_counter()
        tasks = []
        rng = random.Random(7)
        for i in range(len(prompts)):
            if poisson_rate:
                await asyncio.sleep(rng.expovariate(poisson_rate))
            tasks.append(asyncio.create_task(guarded(i)))
        results = await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    return summarise(results, wall, concurrency, poisson_rate)


def summarise(results: list[dict], wall: float, concurrency: int, poisson_rate: float | None) -> dict:
    ok = [r for r in results if "error" not in r]
    total_tokens = sum(r["tokens"] for r in ok)
    return {
        "concurrency": concurrency, "requests": len(results), "errors": len(results) - len(ok),
        "poisson_rate": poisson_rate,
        "aggregate_tok_s": total_tokens / wall, "wall_s": wall,
        "ttft_p50_ms": pct([r["ttft"] for r in ok], .5) * 1e3, "ttft_p99_ms": pct([r["ttft"] for r in ok], .99) * 1e3,
        "tpot_p50_ms": pct([r["tpot"] for r in ok], .5) * 1e3, "tpot_p99_ms": pct([r["tpot"] for r in ok], .99) * 1e3,
        "e2e_p50_ms": pct([r["e2e"] for r in ok], .5) * 1e3, "e2e_p99_ms": pct([r["e2e"] for r in ok], .99) * 1e3,
    }


async def engine_direct(model_dir: Path, device: str, max_batch: int,
                        workloads: dict[int, tuple[list[str], list[int]]]) -> list[dict]:
    """The node's scenarios, same prompts, driven straight into the engine in this process:
    no HTTP, no SSE, no instrumentation. The node's throughput against this is what the
    server and the instrumentation cost (issue target: at most 5 %)."""
    import torch

    from inference.engine.base import GenerationRequest, SamplingParams
    from inference.engine.transformers_cb import TransformersEngine

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        torch.set_num_threads(1)  # as the node runs (OMP_NUM_THREADS=1)
    engine = TransformersEngine(model_dir, device=device, max_batch=max_batch, max_queue=4096)
    await engine.start()

    async def one(c: int, i: int, prompt: str, max_tokens: int, sem: asyncio.Semaphore) -> dict:
        async with sem:
            t0 = time.perf_counter()
            ttft, tokens = None, 0
            request = GenerationRequest(request_id=f"direct-{c}-{i}", model="deepseek-chat",
                                        messages=[{"role": "user", "content": prompt}],
                                        sampling=SamplingParams(temperature=0.7, max_tokens=max_tokens, ignore_eos=True))
            async for out in await engine.generate(request):
                if ttft is None and out.text:
                    ttft = time.perf_counter() - t0
                tokens = out.completion_tokens
            e2e = time.perf_counter() - t0
            ttft = ttft if ttft is not None else e2e
            return {"ttft": ttft, "e2e": e2e, "tokens": tokens,
                    "tpot": (e2e - ttft) / (tokens - 1) if tokens > 1 else 0.0}

    out = []
    try:
        first = next(iter(workloads.values()))
        await asyncio.gather(*(one(0, i, p, n, asyncio.Semaphore(4))  # warm-up, as for the node
                               for i, (p, n) in enumerate(zip(first[0][:4], first[1][:4]))))
        for c, (prompts, maxes) in workloads.items():
            sem = asyncio.Semaphore(c)
            t0 = time.perf_counter()
            results = await asyncio.gather(*(one(c, i, p, n, sem) for i, (p, n) in enumerate(zip(prompts, maxes))))
            s = summarise(results, time.perf_counter() - t0, c, None)
            print(json.dumps({"engine_direct": s}), flush=True)
            out.append(s)
    finally:
        await engine.stop()
    return out


def sequential_baseline(model_dir: Path, device: str, prompts: list[str], max_tokens: list[int]) -> dict:
    """The plain transformers loop: tokenizer(prompt) → model.generate → decode, one request at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dev.type == "cpu":
        torch.set_num_threads(1)  # as the node runs (OMP_NUM_THREADS=1): same cores, no oversubscription
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(dev).eval()
    tokens, t0 = 0, time.perf_counter()
    for prompt, n in zip(prompts, max_tokens):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        inputs = tok(text, return_tensors="pt", add_special_tokens=False).to(dev)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=True, temperature=0.7,
                                 pad_token_id=tok.pad_token_id)
        tokens += out.shape[1] - inputs["input_ids"].shape[1]
        tok.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    wall = time.perf_counter() - t0
    del model
    return {"requests": len(prompts), "aggregate_tok_s": tokens / wall, "wall_s": wall}


def markdown(result: dict) -> str:
    lines = [
        f"Measured {result['date']} on {result['device']} ({result['machine']}), model `{result['model']}`, "
        f"prompts ≈{result['prompt_tokens']} tokens, {result['max_tokens_range']} new tokens (EOS ignored).",
        f"Command: `{result['command']}`", "",
        "| scenario | requests | aggregate tok/s | TTFT p50 / p99 (ms) | TPOT p50 (ms) | E2E p50 / p99 (ms) | × sequential baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    base = result["baseline"]["aggregate_tok_s"]
    lines.append(f"| sequential baseline: `model.generate` per request, in turn | {result['baseline']['requests']} | "
                 f"{base:.1f} | – | – | – | 1.00 |")
    for s in result.get("engine_direct", []):
        lines.append(f"| engine driven directly (no HTTP, no instrumentation), {s['concurrency']} streams | "
                     f"{s['requests']} | {s['aggregate_tok_s']:.1f} | {s['ttft_p50_ms']:.0f} / {s['ttft_p99_ms']:.0f} | "
                     f"{s['tpot_p50_ms']:.1f} | {s['e2e_p50_ms']:.0f} / {s['e2e_p99_ms']:.0f} | "
                     f"{s['aggregate_tok_s'] / base:.2f} |")
    for s in result["scenarios"]:
        name = f"{s['concurrency']} concurrent streams" + (f", Poisson {s['poisson_rate']}/s" if s["poisson_rate"] else "")
        lines.append(f"| node, {name} | {s['requests']} | {s['aggregate_tok_s']:.1f} | "
                     f"{s['ttft_p50_ms']:.0f} / {s['ttft_p99_ms']:.0f} | {s['tpot_p50_ms']:.1f} | "
                     f"{s['e2e_p50_ms']:.0f} / {s['e2e_p99_ms']:.0f} | {s['aggregate_tok_s'] / base:.2f} |")
    direct = {s["concurrency"]: s for s in result.get("engine_direct", [])}
    ratios = [f"{s['concurrency']} streams {s['aggregate_tok_s'] / direct[s['concurrency']]['aggregate_tok_s']:.3f}"
              for s in result["scenarios"] if not s["poisson_rate"] and s["concurrency"] in direct]
    if ratios:
        lines += ["", "Node (HTTP + SSE + instrumentation) against the engine driven directly, same prompts, "
                      "aggregate tok/s ratio: " + ", ".join(ratios) + " (target ≥ 0.95)."]
    return "\n".join(lines)


def write_docs(section: str, text: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    begin, end = f"<!-- serve_bench:{section} -->", f"<!-- /serve_bench:{section} -->"
    doc = path.read_text("utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + f"\n\n## Serving ({section})\n\n{block}\n"
    path.write_text(doc, "utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder (default: a fresh tiny model)")
    ap.add_argument("--size", default="tiny", choices=["tiny", "deepseek-7b"], help="shape when making the model")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=0,
                    help="requests per scenario (default: --requests-per-stream × concurrency, at least 2)")
    ap.add_argument("--requests-per-stream", type=float, default=2.0,
                    help="with --requests 0: requests per concurrent stream (1 = one wave)")
    ap.add_argument("--prompt-tokens", type=int, nargs=2, default=[64, 128], metavar=("MIN", "MAX"))
    ap.add_argument("--max-tokens", type=int, nargs=2, default=[64, 128], metavar=("MIN", "MAX"))
    ap.add_argument("--poisson", type=float, nargs=2, metavar=("USERS", "RATE"), help="extra scenario: USERS concurrent users arriving at RATE/s")
    ap.add_argument("--baseline-requests", type=int, default=8)
    ap.add_argument("--no-engine-direct", action="store_true",
                    help="skip driving the engine directly with the same workloads (the server-overhead reference)")
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--node-arg", action="append", default=[], help="extra flag for seekwatch serve (repeatable)")
    ap.add_argument("--write-docs", metavar="SECTION", help="write the table into docs/benchmarks.md under this section (e.g. cpu-tiny)")
    ap.add_argument("--out", help="JSON results path (default benchmarks/results/<device>-<date>.json)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    model_dir = Path(args.model) if args.model else tmp / f"{args.size}-model"
    if not args.model:
        subprocess.run([sys.executable, "-m", "seekwatch", "make-tiny-model", str(model_dir), "--size", args.size, "--weights", "random"],
                       check=True, stdout=subprocess.DEVNULL)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(0)

    def workload(n):
        prompts = [make_prompt(rng, tok, rng.randint(*args.prompt_tokens)) for _ in range(n)]
        return prompts, [rng.randint(*args.max_tokens) for _ in range(n)]

    node = start_node(tmp, "--model", str(model_dir), "--device", args.device, "--max-batch", str(args.max_batch),
                      "--max-queue", "4096", *args.node_arg, ready_timeout=900)
    scenarios = []
    workloads: dict[int, tuple[list[str], list[int]]] = {}
    try:
        prompts, maxes = workload(4)
        asyncio.run(run_scenario(node.base_url, prompts, maxes, 4))  # warm-up
        for c in args.concurrency:
            prompts, maxes = workload(args.requests or max(2, round(args.requests_per_stream * c)))
            workloads[c] = (prompts, maxes)
            s = asyncio.run(run_scenario(node.base_url, prompts, maxes, c))
            print(json.dumps(s), flush=True)
            scenarios.append(s)
        if args.poisson:
            users, rate = args.poisson
            prompts, maxes = workload(int(users) * 2)
            s = asyncio.run(run_scenario(node.base_url, prompts, maxes, int(users), poisson_rate=rate))
            print(json.dumps(s), flush=True)
            scenarios.append(s)
    finally:
        node.stop()
    # the engine's own account of each interval (forward host time, sampling, prefills)
    engine_log = [ln.split("engine: ", 1)[1] for ln in node.output.read_text("utf-8", "replace").splitlines()
                  if "seekwatch.engine: engine: " in ln]
    print("\n".join(engine_log), flush=True)
    direct = [] if args.no_engine_direct or not workloads else asyncio.run(
        engine_direct(model_dir, args.device, args.max_batch, workloads))
    prompts, maxes = workload(args.baseline_requests)
    baseline = sequential_baseline(model_dir, args.device, prompts, maxes)
    print(json.dumps({"baseline": baseline}), flush=True)

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else f"CPU ({os.cpu_count()} cores)"
    result = {
        "date": dt.date.today().isoformat(), "device": device, "machine": platform.machine(),
        "model": f"{args.size} ({model_dir.name})", "prompt_tokens": f"{args.prompt_tokens[0]}–{args.prompt_tokens[1]}",
        "max_tokens_range": f"{args.max_tokens[0]}–{args.max_tokens[1]}",
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
        "torch": torch.__version__, "baseline": baseline, "scenarios": scenarios, "engine_direct": direct, "engine_log": engine_log,
    }
    table = markdown(result)
    print(table)
    tag = "cuda" if "CPU" not in device else "cpu"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{tag}-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), "utf-8")
    if args.write_docs:
        write_docs(args.write_docs, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
