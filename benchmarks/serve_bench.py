"""Serving benchmark: N concurrent streaming clients through the node's HTTP API, beside what
a user could run instead on the same machine, in one run.

In one run, on the same prompts: the node over HTTP; the node's engine driven directly in
this process (no HTTP, no instrumentation: what the server costs); the sequential baseline
(one ``model.generate`` per request, in turn: the plain transformers loop, warmed up, at
least 4 requests); and transformers'
own fast paths as anchors: ``generate_batch`` (its continuous batching with a paged cache)
at each scenario's concurrency, and ``generate`` with ``cache_implementation="static"`` (its
automatic ``torch.compile`` with CUDA graphs) at batch 1 and at each scenario's batch size.

The load generator runs its streams in several processes (one per 32 streams, at most half
the cores; ``--client-processes``): one process parsing every SSE event of 256 streams was
measured as the limit at about 5,000 tok/s, where it delayed the requests it sent and the
first tokens it saw. A request that fails in transport counts as a failed request, with
its cause, and the run goes on.

Reports TTFT, TPOT and end-to-end percentiles and aggregate generated tokens/s. Results go to
stdout as a markdown table, to ``benchmarks/results/<device>-<date>.json`` (rewritten after
every stage, so a run cut short keeps what it measured), and with ``--write-docs`` into the
marked section of ``docs/benchmarks.md``.

    python benchmarks/serve_bench.py                       # CPU, tiny model, 1/4/16 streams
    python benchmarks/serve_bench.py --size deepseek-7b --device cuda --concurrency 1 64 256 --anchors
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
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

from benchmarks.report import pct, read_stream, write_block  # noqa: E402
from seekwatch.node_process import start_node  # noqa: E402  (the same launcher the tests use)

CORPUS = (ROOT / "inference" / "data" / "tiny_corpus.txt").read_text("utf-8").splitlines()


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
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return {"error": r.status_code}
            ttft, tokens = await read_stream(r, t0)
    except httpx.TransportError as exc:  # counted as a failed request; the node's log says why
        return {"error": f"{exc.__class__.__name__}: {exc}"}
    e2e = time.perf_counter() - t0
    ttft = ttft if ttft is not None else e2e
    return {"ttft": ttft, "e2e": e2e, "tokens": tokens,
            "tpot": (e2e - ttft) / (tokens - 1) if tokens > 1 else 0.0}


#: idle connections of the load generator are dropped after this long: below uvicorn's 5 s
#: keep-alive, so a request never goes out on a connection the node is closing
KEEPALIVE_S = 2.0
#: streams one load-generator process drives at most (auto ``--client-processes``): one
#: process parsing every SSE event of 256 streams became the bottleneck at about 5,000 tok/s
STREAMS_PER_CLIENT = 32


def client_processes(concurrency: int) -> int:
    """Load-generator processes for ``concurrency`` streams: one per :data:`STREAMS_PER_CLIENT`
    streams, at most half the machine's cores (the other half serves)."""
    return max(1, min(-(-concurrency // STREAMS_PER_CLIENT), (os.cpu_count() or 2) // 2))


async def _drive(base_url: str, jobs: list[tuple[int, str, int, float | None]], concurrency: int,
                 start: float) -> tuple[list[tuple[int, dict]], float]:
    """One load generator's share: ``jobs`` (index, prompt, max_tokens, arrival offset or None),
    at most ``concurrency`` at once, from ``start`` (``time.perf_counter``, which is the
    system's monotonic clock, so one start serves every process). Returns each job's result
    and when the last one ended."""
    limits = httpx.Limits(max_connections=concurrency + 8, keepalive_expiry=KEEPALIVE_S)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        sem = asyncio.Semaphore(concurrency)

        async def guarded(i, prompt, max_tokens):
            async with sem:
                return i, await one_stream(client, prompt, max_tokens)

        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        tasks = []
        for i, prompt, max_tokens, at in jobs:
            if at is not None:
                await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            tasks.append(asyncio.create_task(guarded(i, prompt, max_tokens)))
        results = await asyncio.gather(*tasks)
    return results, time.perf_counter()


def _drive_in_process(base_url, jobs, concurrency, start):
    return asyncio.run(_drive(base_url, jobs, concurrency, start))


async def run_scenario(base_url: str, prompts: list[str], max_tokens: list[int], concurrency: int,
                       poisson_rate: float | None = None, processes: int = 1) -> dict:
    """``concurrency`` streams over the prompts (closed loop: a request starts when one ends),
    or arrivals at ``poisson_rate`` per second with at most ``concurrency`` open. With
    ``processes`` > 1 the streams are dealt round-robin to that many load-generator
    processes, each with ``concurrency / processes`` of them, all starting together, so the
    client's own parsing never limits what the node is seen to serve."""
    rng = random.Random(7)
    offsets, at = [], 0.0
    for _ in prompts:
        if poisson_rate:
            at += rng.expovariate(poisson_rate)
        offsets.append(at if poisson_rate else None)
    jobs = list(zip(range(len(prompts)), prompts, max_tokens, offsets))
    processes = max(1, min(processes, concurrency))
    if processes == 1:
        start = time.perf_counter()
        pairs, end = await _drive(base_url, jobs, concurrency, start)
    else:
        import concurrent.futures
        import multiprocessing

        loop = asyncio.get_running_loop()
        with concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            await asyncio.gather(*(loop.run_in_executor(pool, time.sleep, 0.2) for _ in range(processes)))  # started
            start = time.perf_counter() + 0.5
            shares = await asyncio.gather(*(
                loop.run_in_executor(pool, _drive_in_process, base_url, jobs[w::processes],
                                     -(-(concurrency - w) // processes), start)
                for w in range(processes)))
        pairs = [pair for share, _ in shares for pair in share]
        end = max(end for _, end in shares)
    results = [r for _, r in sorted(pairs, key=lambda pair: pair[0])]
    return {**summarise(results, end - start, concurrency, poisson_rate), "client_processes": processes}


def summarise(results: list[dict], wall: float, concurrency: int, poisson_rate: float | None) -> dict:
    """Percentiles over every request of a scenario; without Poisson arrivals also over the
    first ``concurrency`` requests alone (``ttft_together_*``): they arrive together, while
    the later ones start as earlier ones end and find a slot free."""
    ok = [r for r in results if "error" not in r]
    failed = sorted({str(r["error"]) for r in results if "error" in r})
    total_tokens = sum(r["tokens"] for r in ok)
    together = {}
    first = [r["ttft"] for r in results[:concurrency] if "error" not in r]
    if poisson_rate is None and first:
        together = {"together": len(first), "ttft_together_p50_ms": pct(first, .5) * 1e3,
                    "ttft_together_p99_ms": pct(first, .99) * 1e3}
    return {**together,
        "concurrency": concurrency, "requests": len(results), "errors": len(results) - len(ok),
        **({"error_kinds": failed[:5]} if failed else {}),
        "poisson_rate": poisson_rate,
        "aggregate_tok_s": total_tokens / wall, "wall_s": wall,
        "ttft_p50_ms": pct([r["ttft"] for r in ok], .5) * 1e3, "ttft_p99_ms": pct([r["ttft"] for r in ok], .99) * 1e3,
        "tpot_p50_ms": pct([r["tpot"] for r in ok], .5) * 1e3, "tpot_p99_ms": pct([r["tpot"] for r in ok], .99) * 1e3,
        "e2e_p50_ms": pct([r["e2e"] for r in ok], .5) * 1e3, "e2e_p99_ms": pct([r["e2e"] for r in ok], .99) * 1e3,
    }


async def engine_direct(model_dir: Path, device: str, max_batch: int, max_model_len: int | None,
                        workloads: dict[int, tuple[list[str], list[int]]], kv_cache_dtype: str = "auto",
                        max_prefill_tokens: int = 2048) -> list[dict]:
    """The node's scenarios, same prompts, driven straight into the engine in this process:
    no HTTP, no SSE, no instrumentation. The node's throughput against this is what the
    server and the instrumentation cost (issue target: at most 5 %)."""
    import torch

    from inference.engine.base import GenerationRequest, SamplingParams
    from inference.engine.transformers_cb import TransformersEngine

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        torch.set_num_threads(1)  # as the node runs (OMP_NUM_THREADS=1)
    class Keep(logging.Handler):  # the engine's own account (step times), as the node logs it
        def emit(self, record):
            account.append(record.getMessage())

    account: list[str] = []
    engine_log = logging.getLogger("seekwatch.engine")
    keep = Keep()
    engine_log.addHandler(keep)
    engine_log.setLevel(logging.INFO)
    engine = TransformersEngine(model_dir, device=device, max_batch=max_batch, max_queue=4096,
                                max_model_len=max_model_len, kv_cache_dtype=kv_cache_dtype,
                                max_prefill_tokens=max_prefill_tokens)
    await engine.start()
    print(f"engine driven directly: decode path {engine.decode_path}", flush=True)

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
        await release_engine(engine)
        engine_log.removeHandler(keep)
        out.append({"engine_log": account})
    return out


async def release_engine(engine) -> None:
    """Stop an engine driven in this process and give its memory back before the next stage
    loads a model."""
    import gc

    import torch

    await engine.stop()
    engine.model = engine._kv = None
    engine._graphs.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_reference_model(model_dir: Path, device: str):
    """The model as a user would load it with transformers (for the baseline and the anchors)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dev.type == "cpu":
        torch.set_num_threads(1)  # as the node runs (OMP_NUM_THREADS=1): same cores, no oversubscription
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(dev).eval()
    return model, tok, dev


def chat_ids(tok, prompt: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tok.encode(text, add_special_tokens=False)


def sequential_baseline(model, tok, dev, prompts: list[str], max_tokens: list[int], greedy: bool = False,
                        warmup_s: float = 0.0) -> dict:
    """tokenizer(prompt) → ``model.generate`` → decode, one request at a time, after one
    warm-up request as long as the longest (the first call pays for CUDA/cuBLAS
    initialisation; and ``generate``'s cache grows by one token per step, each step a new
    allocation size, so until PyTorch's allocator holds blocks of every size up to the
    longest request it asks the driver for memory at every step: with a 16-token warm-up
    the first requests on an H200 ran at 12-14 tok/s, later ones at 25-40). With
    ``warmup_s``, more warm-up requests (the same prompts, in turn) until that many seconds
    have passed: on an H200 plain ``generate`` ran at 12-19 tok/s for about the first minute
    after loading, whatever the warm-up request, and at 25-40 afterwards; the rates of the
    warm-up requests are kept (``warmup_tok_s``), so the result shows both."""
    import torch

    sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": 0.7}

    def one(prompt: str, n: int) -> int:
        ids = torch.tensor([chat_ids(tok, prompt)], device=dev)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 pad_token_id=tok.pad_token_id, **sampling)
        tok.decode(out[0][ids.shape[1]:], skip_special_tokens=True)
        return out.shape[1] - ids.shape[1]

    longest = max(range(len(prompts)), key=lambda i: len(chat_ids(tok, prompts[i])))
    began = time.perf_counter()
    one(prompts[longest], max(max_tokens))
    warm = []
    while time.perf_counter() - began < warmup_s:
        i = len(warm) % len(prompts)
        t1 = time.perf_counter()
        warm.append(round(one(prompts[i], max_tokens[i]) / (time.perf_counter() - t1), 1))
    tokens, t0, rates = 0, time.perf_counter(), []
    for prompt, n in zip(prompts, max_tokens):
        t1 = time.perf_counter()
        made = one(prompt, n)
        tokens += made
        rates.append(round(made / (time.perf_counter() - t1), 1))
    wall = time.perf_counter() - t0
    return {"requests": len(prompts), "tokens": tokens, "aggregate_tok_s": tokens / wall, "wall_s": wall,
            "per_request_tok_s": rates, "warmup_s": round(t0 - began, 1), "warmup_tok_s": warm}


def static_generate(model, tok, dev, prompts: list[str], new_tokens: int, batch: int, rounds: int = 1) -> dict:
    """``generate`` with ``cache_implementation="static"`` (transformers compiles the decode
    step and replays it as CUDA graphs) over ``batch`` left-padded prompts, ``new_tokens``
    each (EOS ignored). The identical call runs once first: compiling is a one-off cost a
    server pays at start, not per request."""
    import torch

    rows = [chat_ids(tok, p) for p in prompts[:batch]]
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=dev)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=dev)

    def call():
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=True, temperature=0.7, pad_token_id=pad, cache_implementation="static")
        return (out.shape[1] - width) * out.shape[0]

    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    tokens, t0 = 0, time.perf_counter()
    for _ in range(rounds):
        tokens += call()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {"anchor": "static-cache generate", "batch": batch, "prompt_tokens_max": width, "new_tokens": new_tokens,
            "rounds": rounds, "tokens": tokens, "aggregate_tok_s": tokens / wall, "wall_s": wall,
            "first_call_s": first}


def batch_generate(model, tok, prompts: list[str], new_tokens: int) -> dict:
    """transformers' continuous batching (``generate_batch``: paged cache, its own scheduler)
    over all prompts at once, ``new_tokens`` each; after a small warm-up call."""
    from transformers import GenerationConfig

    inputs = [chat_ids(tok, p) for p in prompts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def call(batch, n):
        config = GenerationConfig(max_new_tokens=n, do_sample=True, temperature=0.7, eos_token_id=tok.eos_token_id,
                                  pad_token_id=pad)
        out = model.generate_batch(inputs=batch, generation_config=config)
        return sum(len(o.generated_tokens) for o in out.values())

    call(inputs[:4], 8)
    t0 = time.perf_counter()
    tokens = call(inputs, new_tokens)
    wall = time.perf_counter() - t0
    return {"anchor": "generate_batch", "concurrency": len(inputs), "new_tokens": new_tokens, "tokens": tokens,
            "aggregate_tok_s": tokens / wall, "wall_s": wall}


def free_model_memory(model) -> None:
    """Drop the caches transformers keeps on the model between calls (a static cache of the
    last batch shape, a continuous-batching manager), so the next anchor has the memory."""
    import gc

    import torch

    for attr in ("_cache", "_cache_dependant_input_preparation"):
        if hasattr(model, attr):
            try:
                setattr(model, attr, None)
            except Exception:
                pass
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def markdown(result: dict) -> str:
    base = result.get("baseline", {}).get("aggregate_tok_s")
    anchors = result.get("anchors", [])
    lines = [
        f"Measured {result['date']} on {result['device']} ({result['machine']}), model `{result['model']}`, "
        f"prompts ≈{result['prompt_tokens']} tokens, {result['max_tokens_range']} new tokens (EOS ignored); "
        f"torch {result['torch']}, transformers {result.get('transformers', '?')}.",
        f"Command: `{result['command']}`", "",
        f"Node decode path: {result.get('decode_path', '?')}; attention: {result.get('attention_path') or 'masked SDPA'}"
        + (f"; KV store: {result['kv_cache_dtype']}" if result.get("kv_cache_dtype", "auto") != "auto" else "")
        + (f"; prefill budget {result['max_prefill_tokens']} tokens" if result.get("max_prefill_tokens", 2048) != 2048 else ""), "",
        "| scenario | requests | aggregate tok/s | TTFT p50 / p99 (ms) | TPOT p50 (ms) | E2E p50 / p99 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    if base:
        lines.append(f"| sequential baseline: `model.generate` per request, in turn (warmed up) | {result['baseline']['requests']} | "
                     f"{base:.1f} | – | – | – |")
    for a in anchors:
        if "error" in a or "skipped" in a:
            lines.append(f"| anchor: {a['anchor']} ({a.get('batch') or a.get('concurrency')}) | – | "
                         f"{'failed: ' + a['error'] if 'error' in a else 'not run: ' + a['skipped']} | – | – | – |")
        elif a["anchor"] == "generate_batch":
            lines.append(f"| anchor: `generate_batch`, {a['concurrency']} requests at once, {a['new_tokens']} new | "
                         f"{a['concurrency']} | {a['aggregate_tok_s']:.1f} | – | – | – |")
        else:
            calls = f", {a['rounds']} calls" if a.get("rounds", 1) > 1 else ""
            lines.append(f"| anchor: `generate`, static cache (compiled), batch {a['batch']}, {a['new_tokens']} new"
                         f"{calls} | {a['batch'] * a.get('rounds', 1)} | {a['aggregate_tok_s']:.1f} | – | – | – |")
    for s in [s for s in result.get("engine_direct", []) if "concurrency" in s]:
        lines.append(f"| engine driven directly (no HTTP, no instrumentation), {s['concurrency']} streams | "
                     f"{s['requests']} | {s['aggregate_tok_s']:.1f} | {s['ttft_p50_ms']:.0f} / {s['ttft_p99_ms']:.0f} | "
                     f"{s['tpot_p50_ms']:.1f} | {s['e2e_p50_ms']:.0f} / {s['e2e_p99_ms']:.0f} |")
    for s in result.get("scenarios", []):
        name = f"{s['concurrency']} concurrent streams" + (f", Poisson {s['poisson_rate']}/s" if s["poisson_rate"] else "")
        failed = f" ({s['errors']} failed: {'; '.join(s.get('error_kinds', []))})" if s.get("errors") else ""
        lines.append(f"| node, {name} | {s['requests']}{failed} | {s['aggregate_tok_s']:.1f} | "
                     f"{s['ttft_p50_ms']:.0f} / {s['ttft_p99_ms']:.0f} | {s['tpot_p50_ms']:.1f} | "
                     f"{s['e2e_p50_ms']:.0f} / {s['e2e_p99_ms']:.0f} |")
    together = [s for s in result.get("scenarios", []) if "ttft_together_p50_ms" in s]
    if together:
        lines += ["", "| node, requests that arrive together | TTFT p50 / p99 (ms) |", "|---|---|"]
        lines += [f"| {s['together']} of {s['requests']} ({s['concurrency']} streams) | "
                  f"{s['ttft_together_p50_ms']:.0f} / {s['ttft_together_p99_ms']:.0f} |" for s in together]
    ratios = []
    direct = {s["concurrency"]: s for s in result.get("engine_direct", []) if "concurrency" in s}
    batched = {a["concurrency"]: a for a in anchors if a["anchor"] == "generate_batch" and "aggregate_tok_s" in a}
    static = {a["batch"]: a for a in anchors if a["anchor"] == "static-cache generate" and "aggregate_tok_s" in a}
    for s in result.get("scenarios", []):
        if s["poisson_rate"]:
            continue
        c, tps, parts = s["concurrency"], s["aggregate_tok_s"], []
        if c in direct:
            parts.append(f"÷ engine directly {tps / direct[c]['aggregate_tok_s']:.3f}")
        if c in batched:
            parts.append(f"÷ `generate_batch` {tps / batched[c]['aggregate_tok_s']:.2f}")
        if c in static:
            parts.append(f"÷ static-cache `generate` (batch {c}) {tps / static[c]['aggregate_tok_s']:.2f}")
        if base:
            parts.append(f"÷ sequential baseline {tps / base:.2f}")
        if parts:
            ratios.append(f"| node, {c} streams | " + "; ".join(parts) + " |")
    if ratios:
        lines += ["", "| node against | ratios of aggregate tok/s, same run |", "|---|---|"] + ratios
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder (default: a fresh tiny model)")
    ap.add_argument("--size", default="tiny", choices=["tiny", "deepseek-7b"], help="shape when making the model")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=0,
                    help="requests per scenario (default: --requests-per-stream × concurrency, at least 4)")
    ap.add_argument("--requests-per-stream", type=float, default=2.0,
                    help="with --requests 0: requests per concurrent stream (1 = one wave)")
    ap.add_argument("--prompt-tokens", type=int, nargs=2, default=[64, 128], metavar=("MIN", "MAX"))
    ap.add_argument("--max-tokens", type=int, nargs=2, default=[64, 128], metavar=("MIN", "MAX"))
    ap.add_argument("--poisson", type=float, nargs=2, metavar=("USERS", "RATE"), help="extra scenario: USERS concurrent users arriving at RATE/s")
    ap.add_argument("--baseline-requests", type=int, default=8, help="plain generate() requests, in turn (at least 4)")
    ap.add_argument("--baseline-warmup-s", type=float,
                    help="keep warming the baseline up this long before measuring (default: 60 on CUDA, 0 on the CPU)")
    ap.add_argument("--no-engine-direct", action="store_true",
                    help="skip driving the engine directly with the same workloads (the server-overhead reference)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the sequential baseline and the anchors (a quick look, not a table for the docs)")
    ap.add_argument("--anchors", action="store_true",
                    help="also run transformers' generate_batch and static-cache generate on the same prompts")
    ap.add_argument("--client-processes", type=int,
                    help="load-generator processes per scenario (default: one per 32 streams, at most half the cores)")
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--max-model-len", type=int, help="context length for the node and the direct engine")
    ap.add_argument("--kv-cache-dtype", default="auto",
                    help="the KV store of the node and of the engine driven directly: auto (the model's dtype) or fp8")
    ap.add_argument("--max-prefill-tokens", type=int, default=2048,
                    help="the chunked-prefill budget of the node and of the engine driven directly")
    ap.add_argument("--node-arg", action="append", default=[], help="extra flag for seekwatch serve (repeatable)")
    ap.add_argument("--deadline-s", type=float, default=0,
                    help="skip the stages that would start after this many seconds (0: none); each stage's results are kept")
    ap.add_argument("--write-docs", metavar="SECTION", help="write the table into docs/benchmarks.md under this section (e.g. cpu-tiny)")
    ap.add_argument("--out", help="JSON results path (default benchmarks/results/<device>-<date>.json)")
    args = ap.parse_args()
    if args.baseline_requests < 4:
        ap.error("--baseline-requests must be at least 4 (one request measures noise)")
    began = time.monotonic()

    def late(stage: str) -> bool:
        if args.deadline_s and time.monotonic() - began > args.deadline_s:
            print(f"skipping {stage}: past --deadline-s {args.deadline_s:.0f}", flush=True)
            return True
        return False

    import torch
    import transformers

    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)"
    date = dt.date.today().isoformat()
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{'cuda' if cuda else 'cpu'}-{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "date": date, "device": device, "machine": platform.machine(),
        "model": f"{args.size} ({Path(args.model).name if args.model else args.size + '-model'})",
        "prompt_tokens": f"{args.prompt_tokens[0]}–{args.prompt_tokens[1]}",
        "max_tokens_range": f"{args.max_tokens[0]}–{args.max_tokens[1]}",
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
        "torch": torch.__version__, "transformers": transformers.__version__, "kv_cache_dtype": args.kv_cache_dtype,
        "max_prefill_tokens": args.max_prefill_tokens,
        "scenarios": [], "engine_direct": [], "anchors": [],
    }

    def save() -> None:
        out.write_text(json.dumps(result, indent=2), "utf-8")

    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    model_dir = Path(args.model) if args.model else tmp / f"{args.size}-model"
    if not args.model:
        subprocess.run([sys.executable, "-m", "seekwatch", "make-tiny-model", str(model_dir), "--size", args.size,
                        "--weights", "random", "--device", "cuda" if cuda else "cpu"],
                       check=True, stdout=subprocess.DEVNULL)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(0)

    def workload(n):
        prompts = [make_prompt(rng, tok, rng.randint(*args.prompt_tokens)) for _ in range(n)]
        return prompts, [rng.randint(*args.max_tokens) for _ in range(n)]

    len_args = ["--max-model-len", str(args.max_model_len)] if args.max_model_len else []
    node = start_node(tmp, "--model", str(model_dir), "--device", args.device, "--max-batch", str(args.max_batch),
                      "--max-queue", "4096", "--kv-cache-dtype", args.kv_cache_dtype, *len_args, *args.node_arg,
                      "--max-prefill-tokens", str(args.max_prefill_tokens),
                      ready_timeout=240)
    workloads: dict[int, tuple[list[str], list[int]]] = {}
    try:
        ready = node.readyz()
        result["decode_path"], result["attention_path"] = ready.get("decode_path"), ready.get("attention_path")
        print(f"node decode path: {result['decode_path']}; attention: {result['attention_path']}", flush=True)
        prompts, maxes = workload(8)
        asyncio.run(run_scenario(node.base_url, prompts, maxes, 8))  # warm-up
        for c in args.concurrency:
            prompts, maxes = workload(args.requests or max(4, round(args.requests_per_stream * c)))
            workloads[c] = (prompts, maxes)
            s = asyncio.run(run_scenario(node.base_url, prompts, maxes, c,
                                         processes=args.client_processes or client_processes(c)))
            print(json.dumps(s), flush=True)
            result["scenarios"].append(s)
            save()
        if args.poisson:
            users, rate = args.poisson
            prompts, maxes = workload(int(users) * 2)
            s = asyncio.run(run_scenario(node.base_url, prompts, maxes, int(users), poisson_rate=rate,
                                         processes=args.client_processes or client_processes(int(users))))
            print(json.dumps(s), flush=True)
            result["scenarios"].append(s)
    finally:
        node.stop()
        # the engine's own account of each interval (forward host time, sampling, prefills)
        node_log = node.output.read_text("utf-8", "replace").splitlines()
        result["engine_log"] = [ln.split("engine: ", 1)[1] for ln in node_log if "seekwatch.engine: engine: " in ln]
        # with --engine-process: the child's own account (its event loop's lag, admission, messages)
        result["engine_process_log"] = [ln.split("seekwatch.engine.process: ", 1)[1] for ln in node_log
                                        if "seekwatch.engine.process: engine process: " in ln]
        result["node_start_log"] = [ln for ln in node_log if any(
            key in ln for key in ("seekwatch.engine: loaded", "KV memory", "decode attention"))]
        # what went wrong in the node, if anything (a failed request's cause is here)
        result["node_problems"] = [ln for ln in node_log if " WARNING " in ln or " ERROR " in ln
                                   or ln.startswith("Traceback") or ln.startswith(" ")][:200]
        save()
    print("\n".join(result["engine_log"]), flush=True)
    if not args.no_engine_direct and workloads and not late("engine driven directly"):
        result["engine_direct"] = asyncio.run(engine_direct(model_dir, args.device, args.max_batch, args.max_model_len,
                                                            workloads, args.kv_cache_dtype, args.max_prefill_tokens))
        save()
    if not args.no_baseline and not late("baseline"):
        model, tok_ref, dev = load_reference_model(model_dir, args.device)
        prompts, maxes = workload(args.baseline_requests)
        warmup = args.baseline_warmup_s if args.baseline_warmup_s is not None else (60.0 if cuda else 0.0)
        result["baseline"] = sequential_baseline(model, tok_ref, dev, prompts, maxes, warmup_s=warmup)
        print(json.dumps({"baseline": result["baseline"]}), flush=True)
        save()
        if args.anchors:
            new_tokens = (args.max_tokens[0] + args.max_tokens[1]) // 2
            one = workloads.get(1, workload(4))[0]
            stages = [("static-cache generate", 1, lambda: static_generate(model, tok_ref, dev, one, new_tokens, 1, rounds=4))]
            for c in sorted(c for c in workloads if c > 1):
                ps = workloads[c][0][:c]
                stages.append(("generate_batch", c, lambda ps=ps: batch_generate(model, tok_ref, ps, new_tokens)))
            for c in sorted(c for c in workloads if c > 1):
                ps = workloads[c][0][:c]
                stages.append(("static-cache generate", c,
                               lambda ps=ps, c=c: static_generate(model, tok_ref, dev, ps, new_tokens, c)))
            for name, c, run in stages:
                key = "batch" if name.startswith("static") else "concurrency"
                if late(f"anchor {name} ({c})"):
                    result["anchors"].append({"anchor": name, key: c, "skipped": "time"})
                    continue
                try:
                    a = run()
                except Exception as exc:  # an anchor that fails is reported, the rest still run
                    a = {"anchor": name, key: c, "error": f"{exc.__class__.__name__}: {str(exc)[:300]}"}
                print(json.dumps(a), flush=True)
                result["anchors"].append(a)
                free_model_memory(model)
                save()
    table = markdown(result)
    print(table)
    save()
    if args.write_docs:
        write_block(f"serve_bench:{args.write_docs}", f"Serving ({args.write_docs})", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
