"""Is serve_bench's sequential baseline (plain ``model.generate``, one request at a time) what
a user gets in a clean process? serve_bench runs it in the process that has just driven the
node's engine directly; this runs the same baseline on the same prompts in a fresh process,
then after an engine has run and stopped in that process, and once more greedily, so a slow
baseline can be told apart from a slow machine.

    python benchmarks/baseline_check.py --model /tmp/m/deepseek-7b --out results.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serve_bench import (  # noqa: E402
    free_model_memory, load_reference_model, make_prompt, release_engine, sequential_baseline,
)


async def run_engine(model_dir: Path, device: str, prompts: list[str], max_tokens: list[int]) -> None:
    """Start the node's engine in this process, serve the prompts, stop it and drop it, as
    serve_bench's ``engine_direct`` stage does before the baseline."""
    from inference.engine.base import GenerationRequest, SamplingParams
    from inference.engine.transformers_cb import TransformersEngine

    engine = TransformersEngine(model_dir, device=device, max_batch=64, max_queue=64, max_model_len=832)
    await engine.start()
    try:
        async def one(i):
            req = GenerationRequest(f"e{i}", "m", [{"role": "user", "content": prompts[i]}],
                                    SamplingParams(temperature=0.7, max_tokens=max_tokens[i], ignore_eos=True))
            async for _ in await engine.generate(req):
                pass
        await asyncio.gather(*(one(i) for i in range(len(prompts))))
    finally:
        await release_engine(engine)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--greedy-first", action="store_true", help="the greedy round before the sampled ones")
    ap.add_argument("--no-engine", action="store_true", help="skip the round after the engine")
    ap.add_argument("--out")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    model_dir = Path(args.model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(0)
    prompts = [make_prompt(rng, tok, rng.randint(64, 512)) for _ in range(args.requests)]
    maxes = [rng.randint(128, 256) for _ in range(args.requests)]
    result: dict = {}
    model, tok_ref, dev = load_reference_model(model_dir, args.device)
    if args.greedy_first:
        result["clean process, greedy"] = sequential_baseline(model, tok_ref, dev, prompts, maxes, greedy=True)
        print(json.dumps(result), flush=True)
    result["clean process, sampled"] = sequential_baseline(model, tok_ref, dev, prompts, maxes)
    print(json.dumps(result), flush=True)
    result["clean process, sampled again"] = sequential_baseline(model, tok_ref, dev, prompts, maxes)
    print(json.dumps(result), flush=True)
    if not args.greedy_first:
        result["clean process, greedy"] = sequential_baseline(model, tok_ref, dev, prompts, maxes, greedy=True)
        print(json.dumps(result), flush=True)
    if args.no_engine:
        return _save(result, args.out)
    del model
    free_model_memory(None)
    asyncio.run(run_engine(model_dir, args.device, prompts, maxes))
    model, tok_ref, dev = load_reference_model(model_dir, args.device)
    result["after an engine ran in the process, sampled"] = sequential_baseline(model, tok_ref, dev, prompts, maxes)
    print(json.dumps(result), flush=True)
    return _save(result, args.out)


def _save(result: dict, out: str | None) -> int:
    if out:
        Path(out).write_text(json.dumps(result, indent=2), "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
