"""What the remaining levers of the 256-stream scenario are worth, by a cost model rather
than a GPU run: the scenario's schedule replayed step by step with per-step costs measured
on the H200 (run 24 and its step profile), once as the engine runs it and once per change.

The model is a replay, not a measurement. It follows the engine's scheduler (waiting
requests take free slots, at most ``--max-prefill-tokens`` prompt tokens of at most 16
prompts per prefill step, each prefill step followed by a decode step over every running
row, a stream's second request arriving when its first ends) and charges each step:

* decode: the matrix multiplies at the padded batch, ``max(weights, matmul × rows / 256)``
  (reading the weights once bounds a small batch; arithmetic a large one), the attention in
  proportion to the live tokens the rows hold, and the small kernels (norms, rotary, SiLU,
  copies) in proportion to the padded rows;
* prefill: the padded token bucket at the measured prefill rate.

It leaves out what the device does not spend on kernels (the host's idle moments, the load
generator's ramp), so its tokens/s is above the node's; the ratios between variants are
what it is for. ``--write-docs`` puts the table into docs/benchmarks.md.

    python benchmarks/scenario_model.py --write-docs
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.engine.transformers_cb import batch_sizes, bucket_for, prefill_sizes  # noqa: E402


@dataclass(frozen=True)
class Costs:
    """Per-step costs on the H200, 7B shape, bf16 store (ms, and tokens/s for prefill)."""
    weights_ms: float = 2.9        # reading 14 GB of weights once at ~4.8 TB/s
    matmul_256_ms: float = 5.0     # the decode step's matrix multiplies at 256 rows (step profile)
    attention_ms: float = 12.1     # decode attention at 256 rows over their live tokens ...
    attention_tokens: int = 104_008  # ... which held this many tokens
    small_256_ms: float = 1.2      # norms, copies, rotary, SiLU at 256 rows
    step_fixed_ms: float = 0.3     # sampling and the step's own copies
    prefill_tok_s: float = 45_000  # prefill chunks of ~1,400 tokens (run 24: 44,400)


POW2 = (1, 2, 4, 8, 16, 32, 64, 128, 256)   # the engine's batch buckets before 2026-12-04
EVERY_8 = (1, 2, 4, *range(8, 257, 8))      # vLLM's


def coarse_prefill(top: int) -> list[int]:
    """The prefill buckets before 2026-12-04: 64, every 128 up to 1,024, every 256 above."""
    return sorted(b for b in {64, *range(128, 1025, 128), *range(1280, top, 256), top} if b <= top)


@dataclass(frozen=True)
class Variant:
    name: str
    batch_buckets: tuple[int, ...] = tuple(batch_sizes(256))   # the engine's own
    prefill_buckets: Callable[[int], list[int]] | None = prefill_sizes  # None: a step costs its tokens
    small_scale: float = 1.0       # the small kernels' share after fusing


VARIANTS = (
    Variant("the engine as it is (batch buckets every 32 rows above 128, prefill every 32 tokens)"),
    Variant("before (batch buckets 1, 2, 4 … 256; prefill 64, every 128 to 1,024, every 256 above)",
            POW2, coarse_prefill),
    Variant("batch buckets every 8 rows (vLLM's)", EVERY_8),
    Variant("prefill steps without padding", prefill_buckets=None),
    Variant("half the small kernels' time (fused residual adds and norms)", small_scale=0.5),
    Variant("all three (every 8 rows, no prefill padding, half the small kernels)", EVERY_8, None, 0.5),
)


def replay(variant: Variant, costs: Costs = Costs(), streams: int = 256, requests_per_stream: int = 2,
           prompt_tokens: tuple[int, int] = (64, 512), max_tokens: tuple[int, int] = (128, 256),
           max_prefill_tokens: int = 2048, max_prefill_per_step: int = 16, seed: int = 0) -> tuple[int, float]:
    """(tokens generated, seconds of device work) for one replay of the scenario."""
    rng = random.Random(seed)
    jobs = [[(rng.randint(*prompt_tokens), rng.randint(*max_tokens)) for _ in range(requests_per_stream)]
            for _ in range(streams)]
    top = -(-max_prefill_tokens // 64) * 64
    prefill_buckets = variant.prefill_buckets(top) if variant.prefill_buckets else None
    waiting = [(s, 0) for s in range(streams)]
    prefilling: list[list[int]] = []  # [stream, job, prompt tokens done, prompt tokens]
    running: list[list[int]] = []     # [stream, job, tokens held, tokens left to generate]
    ms, tokens = 0.0, 0
    while waiting or prefilling or running:
        while waiting and len(running) + len(prefilling) < streams:
            s, j = waiting.pop(0)
            prefilling.append([s, j, 0, jobs[s][j][0]])
        if prefilling:
            budget, taken = max_prefill_tokens, 0
            for seq in prefilling[:max_prefill_per_step]:
                take = min(seq[3] - seq[2], budget)
                if take <= 0:
                    break
                seq[2] += take
                budget -= take
                taken += take
            ms += (bucket_for(taken, prefill_buckets) if prefill_buckets else taken) / costs.prefill_tok_s * 1e3
            for seq in [q for q in prefilling if q[2] >= q[3]]:
                prefilling.remove(seq)
                running.append([seq[0], seq[1], seq[3], jobs[seq[0]][seq[1]][1] - 1])
                tokens += 1  # the first token comes from the prefill step
        if running:
            rows = bucket_for(len(running), variant.batch_buckets)
            live = sum(q[2] for q in running)
            ms += (max(costs.weights_ms, costs.matmul_256_ms * rows / 256)
                   + costs.attention_ms * live / costs.attention_tokens
                   + costs.small_256_ms * variant.small_scale * rows / 256 + costs.step_fixed_ms)
            for q in running:
                q[2] += 1
                q[3] -= 1
            tokens += len(running)
            for q in [q for q in running if q[3] <= 0]:
                running.remove(q)
                if q[1] + 1 < requests_per_stream:
                    waiting.append((q[0], q[1] + 1))
    return tokens, ms / 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="replays per variant (different random workloads)")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    rows = ["| variant | tokens/s of device work (median of the replays) | against the engine as it is |",
            "|---|---|---|"]
    base = None
    for variant in VARIANTS:
        rate = statistics.median(t / s for t, s in (replay(variant, seed=i) for i in range(args.seeds)))
        base = base or rate
        rows.append(f"| {variant.name} | {rate:,.0f} | {rate / base - 1:+.1%} |")
    table = "\n".join([f"Command: `python benchmarks/scenario_model.py{' --write-docs' if args.write_docs else ''}` "
                       f"({args.seeds} replays per variant; costs in `benchmarks/scenario_model.py`'s `Costs`)", "",
                       *rows])
    print(table)
    if args.write_docs:
        from benchmarks.report import write_block

        write_block("scenario_model", "Scenario model", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
