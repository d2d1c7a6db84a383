"""Instrumentation overhead: the same load against a node with instrumentation on and one
with it off (``--no-instrumentation``), alternating in one run, so both see the same machine.

Reports the throughput ratio (on / off, per paired round) and the added p50 latency per
request, each with a bootstrap 95 % interval, and writes them into docs/benchmarks.md with
``--write-docs`` (``--out`` keeps every round's figures as JSON).

A round is, per node, a **throughput round** (``--requests`` requests over ``--concurrency``
closed-loop streams, which saturate the node) and ``--latency-requests`` **isolated
requests**, one at a time and alternating between the nodes request by request. The
throughput ratio comes from the former; the added latency per request from the latter: on a
saturated node every request's latency stretches by the throughput lost times its own
duration, which is the throughput target's business, not the per-request one's.

Noise, and what is done about it:

* The nodes of a pair share one core and the load generator has the other (``--no-pin``
  turns this off); only one node runs at a time. Both nodes get the same hash seed.
* Wall-clock throughput drifts by several per cent between rounds, so each round also reads
  the node process's own CPU time (all its threads, ``/proc/<pid>/task/*/schedstat``, ns).
* Two processes running identical code still differ by a few per cent (memory layout), so
  the rounds are spread over several fresh pairs of nodes (``--node-pairs``) and the
  per-pair medians are printed beside the pooled ones.
* The in-process count of the instrumentation's own CPU per turn, which has no such noise,
  is reported beside it.

    python benchmarks/overhead.py --rounds 180 --node-pairs 6 --write-docs
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from benchmarks.report import cpu_split, write_block  # noqa: E402
from benchmarks.serve_bench import make_prompt, one_stream, run_scenario  # noqa: E402
from seekwatch.node_process import start_node  # noqa: E402


def per_turn_cost_us(n: int = 5000) -> dict[str, float]:
    """In-process microseconds of CPU per turn, counted without scheduling noise, in the
    node's own arrangement (an event loop, the session log's writer thread):

    * ``request_path``: ``on_turn`` itself (it only schedules the rest), from the loop
      thread's clock;
    * ``after_response``: the loop's work on the next iteration (status with the refusal
      check, metrics, masking, building and serialising the record), the same clock, an
      empty loop iteration subtracted;
    * ``total``: all threads (the writer's I/O included), process clock, the same
      subtraction."""
    import time

    from prometheus_client import CollectorRegistry

    from inference.config import NodeConfig
    from inference.instrumentation import NodeInstrumentation
    from inference.turns import TurnRecord
    from contracts.cost import CostModel

    class _Engine:
        def state(self):
            from inference.engine.base import EngineState
            return EngineState(True, 0, 0, 1, 1)

    log_dir = tempfile.mkdtemp(prefix="overhead-log-")
    inst = NodeInstrumentation.from_config(NodeConfig(log_dir=log_dir), CollectorRegistry(), _Engine(), CostModel.load())
    turn = TurnRecord(request_id="chatcmpl-abc", session_id="fp-1", turn_index=2, endpoint="/v1/chat/completions",
                      stream=True, model="deepseek-chat", model_version="tiny", started_at=time.time(),
                      prompt="我的订单还没到，电话13812345678，请帮我查一下物流。" * 3,
                      response="您好，您的订单已于昨日发出，预计两天内送达。Tracking number is on the order page. " * 4,
                      prompt_tokens=120, completion_tokens=96, finish_reason="stop", e2e_s=1.2, ttft_s=0.08, queue_s=0.01)

    async def drive(turns: int, observe: bool) -> tuple[float, float, float]:
        on_turn = 0.0
        t0, c0 = time.thread_time(), time.process_time()
        for _ in range(turns):
            if observe:
                t = time.thread_time()
                inst.on_turn(turn)
                on_turn += time.thread_time() - t
            await asyncio.sleep(0)  # the loop's next iteration: the deferred record work
        if observe:
            inst.writer.flush(60)  # the writer thread's I/O
        return on_turn, time.thread_time() - t0, time.process_time() - c0

    asyncio.run(drive(200, True))
    _, empty_loop, empty_cpu = asyncio.run(drive(n, False))
    on_turn, loop_thread, all_cpu = asyncio.run(drive(n, True))
    inst.close()
    return {"request_path": on_turn / n * 1e6,
            "after_response": (loop_thread - empty_loop - on_turn) / n * 1e6,
            "total": (all_cpu - empty_cpu) / n * 1e6}


def process_cpu_s(pid: int) -> float:
    """CPU seconds of one process, all its live threads, in nanoseconds' resolution
    (``/proc/<pid>/task/*/schedstat``; ``/proc/<pid>/stat`` counts in 10 ms ticks, which is
    0.2 ms per request over a 48-request round — the size of the effect being measured)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # a thread that ended between listdir and read
    return total / 1e9


def bootstrap_ci(samples: list, stat, n: int = 2000, seed: int = 7) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of ``stat(samples)``, resampling whole samples
    (a round's figure, or an isolated (on, off) pair)."""
    import random

    rng = random.Random(seed)
    vals = sorted(stat(rng.choices(samples, k=len(samples))) for _ in range(n))
    return vals[int(0.025 * n)], vals[int(0.975 * n) - 1]


def median_ci(xs: list[float]) -> tuple[float, float, float]:
    """(median, low, high): the median of ``xs`` with its bootstrap 95 % interval."""
    return (statistics.median(xs), *bootstrap_ci(xs, statistics.median, n=5000))


async def _pair_rounds(nodes: dict, args, prompts: list[str], maxes: list[int], rounds: int,
                       results: dict[str, list], first_on: bool) -> None:
    """Paired rounds on one node pair. Each round is a throughput round per node (the load
    ``--concurrency`` streams), then ``--latency-requests`` isolated requests per node,
    one at a time and alternating per request, whose end-to-end times are paired."""
    async with httpx.AsyncClient(base_url=nodes["on"].base_url, timeout=600) as c_on, \
            httpx.AsyncClient(base_url=nodes["off"].base_url, timeout=600) as c_off:
        clients = {"on": c_on, "off": c_off}
        for name, node in nodes.items():  # warm-up
            await run_scenario(node.base_url, prompts[:8], maxes[:8], args.concurrency)
            for p in prompts[:4]:
                await one_stream(clients[name], p, args.latency_tokens)
        for r in range(rounds):
            order = ("on", "off") if (r % 2 == 0) == first_on else ("off", "on")
            for name in order:
                pid = nodes[name].proc.pid
                c0 = process_cpu_s(pid)
                s = await run_scenario(nodes[name].base_url, prompts, maxes, args.concurrency)
                s["cpu_ms_per_request"] = (process_cpu_s(pid) - c0) / len(prompts) * 1e3
                assert s["errors"] == 0
                results[name].append(s)
            lat = []
            for i in range(args.latency_requests):
                prompt = prompts[(r * args.latency_requests + i) % len(prompts)]
                pair = {}
                for name in (order if i % 2 == 0 else order[::-1]):
                    res = await one_stream(clients[name], prompt, args.latency_tokens)
                    assert "error" not in res, res
                    pair[name] = res["e2e"] * 1e3
                lat.append((pair["on"], pair["off"], i, order[0]))
            results["isolated"].extend(lat)
            on_s, off_s = results["on"][-1], results["off"][-1]
            print(f"round {r + 1}/{rounds}: tok/s on {on_s['aggregate_tok_s']:.1f} off {off_s['aggregate_tok_s']:.1f}; "
                  f"cpu ms/request on {on_s['cpu_ms_per_request']:.2f} off {off_s['cpu_ms_per_request']:.2f}; "
                  f"isolated e2e median on {statistics.median(x[0] for x in lat):.2f} "
                  f"off {statistics.median(x[1] for x in lat):.2f} ms", flush=True)


def p50_shift(pairs: list) -> float:
    """p50 of the first members minus p50 of the second (ms): the added p50 latency."""
    return statistics.median(x[0] for x in pairs) - statistics.median(x[1] for x in pairs)


def mean_diff(pairs: list) -> float:
    return statistics.fmean(x[0] - x[1] for x in pairs)


def _run_pair(tmp: Path, model: Path, args, prompts: list[str], maxes: list[int], rounds: int,
              results: dict[str, list], first_on: bool, node_cpus: set[int] | None) -> None:
    """Start one fresh pair of nodes (instrumentation on / off) with the same hash seed and
    the same CPU, and run ``rounds`` paired rounds on them."""
    env = {"PYTHONHASHSEED": "0"}
    common = ("--model", str(model), "--max-batch", str(args.concurrency))
    on = start_node(tmp, *common, env=env, cpus=node_cpus)
    off = start_node(tmp, *common, "--no-instrumentation", env=env, cpus=node_cpus)
    try:
        asyncio.run(_pair_rounds({"on": on, "off": off}, args, prompts, maxes, rounds, results, first_on))
    finally:
        on.stop()
        off.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--rounds", type=int, default=120, help="paired rounds in all")
    ap.add_argument("--node-pairs", type=int, default=6, help="fresh on/off node pairs the rounds are spread over")
    ap.add_argument("--requests", type=int, default=48, help="requests per throughput round")
    ap.add_argument("--concurrency", type=int, default=8, help="streams of the throughput rounds")
    ap.add_argument("--max-tokens", type=int, default=32, help="new tokens per request of the throughput rounds")
    ap.add_argument("--latency-requests", type=int, default=16,
                    help="isolated requests per node per round (one at a time), for the added latency")
    ap.add_argument("--latency-tokens", type=int, default=8,
                    help="new tokens per isolated request: short, so the per-turn cost is a visible share")
    ap.add_argument("--no-pin", action="store_true", help="do not put the nodes and the load generator on separate cores")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--out", help="also write every round's and every isolated pair's figures to this JSON file")
    args = ap.parse_args()

    import random

    tmp = Path(tempfile.mkdtemp(prefix="overhead-"))
    model = Path(args.model) if args.model else tmp / "tiny"
    if not args.model:
        subprocess.run([sys.executable, "-m", "seekwatch", "make-tiny-model", str(model), "--weights", "random"], check=True,
                       stdout=subprocess.DEVNULL)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    rng = random.Random(1)
    prompts = [make_prompt(rng, tok, rng.randint(32, 96)) + " 电话13812345678" for _ in range(args.requests)]
    maxes = [args.max_tokens] * args.requests
    client_cpus, node_cpus = cpu_split(args.no_pin)  # the nodes of a pair share one core; one runs at a time
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    results: dict[str, list] = {"on": [], "off": [], "isolated": []}
    pairs_n = max(1, min(args.node_pairs, args.rounds))
    per_pair: list[tuple[float, float]] = []
    for pair in range(pairs_n):
        rounds = args.rounds // pairs_n + (1 if pair < args.rounds % pairs_n else 0)
        n_on, n_iso = len(results["on"]), len(results["isolated"])
        _run_pair(tmp, model, args, prompts, maxes, rounds, results, pair % 2 == 0, node_cpus)
        per_pair.append((
            statistics.median(a["aggregate_tok_s"] / b["aggregate_tok_s"]
                              for a, b in zip(results["on"][n_on:], results["off"][n_on:])),
            p50_shift(results["isolated"][n_iso:])))
        print(f"node pair {pair + 1}/{pairs_n} done: throughput ratio {per_pair[-1][0]:.3f}, "
              f"isolated added {per_pair[-1][1]:+.3f} ms", flush=True)

    def med(name, key):
        return statistics.median(s[key] for s in results[name])

    cost = per_turn_cost_us()
    off_cpu_ms = med('off', 'cpu_ms_per_request')

    pairs = list(zip(results["on"], results["off"]))
    iso = results["isolated"]
    ratio, ratio_lo, ratio_hi = median_ci([a["aggregate_tok_s"] / b["aggregate_tok_s"] for a, b in pairs])
    added, added_lo, added_hi = median_ci([a["e2e_p50_ms"] - b["e2e_p50_ms"] for a, b in pairs])
    iso_added, (iso_lo, iso_hi) = p50_shift(iso), bootstrap_ci(iso, p50_shift)
    iso_mean, (mean_lo, mean_hi) = mean_diff(iso), bootstrap_ci(iso, mean_diff)
    cpu_ratio, cpu_lo, cpu_hi = median_ci([a["cpu_ms_per_request"] / b["cpu_ms_per_request"] for a, b in pairs])
    cpu_added, cpu_added_lo, cpu_added_hi = median_ci([a["cpu_ms_per_request"] - b["cpu_ms_per_request"]
                                                       for a, b in pairs])
    placement = (f"the nodes on CPU {sorted(node_cpus)[0]}, the load generator on CPU {sorted(client_cpus)[0]}"
                 if node_cpus else "nodes and load generator unpinned")
    table = "\n".join([
        f"Measured {dt.date.today()} on CPU ({os.cpu_count()} cores; {placement}), tiny model, "
        f"{args.rounds} paired rounds on {pairs_n} fresh node pairs. A round is, per node, a throughput round "
        f"({args.requests} requests, {args.concurrency} concurrent streams, {args.max_tokens} new tokens) and "
        f"{args.latency_requests} isolated requests (one at a time, alternating between the nodes, "
        f"{args.latency_tokens} new tokens). Prompts carry a phone number to mask. "
        "Command: `python benchmarks/overhead.py " + " ".join(sys.argv[1:]) + "`", "",
        "| | instrumentation on | off |", "|---|---|---|",
        f"| aggregate tok/s at {args.concurrency} streams (median) | {med('on', 'aggregate_tok_s'):.1f} | "
        f"{med('off', 'aggregate_tok_s'):.1f} |",
        f"| node CPU ms per request (median) | {med('on', 'cpu_ms_per_request'):.2f} | "
        f"{med('off', 'cpu_ms_per_request'):.2f} |",
        f"| e2e p50 ms at {args.concurrency} streams (median) | {med('on', 'e2e_p50_ms'):.2f} | "
        f"{med('off', 'e2e_p50_ms'):.2f} |",
        f"| e2e p50 ms of an isolated request | {statistics.median(x[0] for x in iso):.2f} | "
        f"{statistics.median(x[1] for x in iso):.2f} |",
        "",
        "| paired, on vs off | median | bootstrap 95 % interval | target |",
        "|---|---|---|---|",
        f"| throughput ratio (wall clock, per round) | **{ratio:.3f}** | {ratio_lo:.3f} – {ratio_hi:.3f} | ≥ 0.99 |",
        f"| node CPU per request, ratio off/on (per round) | **{1 / cpu_ratio:.3f}** | "
        f"{1 / cpu_hi:.3f} – {1 / cpu_lo:.3f} | ≥ 0.99 |",
        f"| added p50 latency per request: isolated requests' e2e p50, on − off ({len(iso)} pairs) | "
        f"**{iso_added:+.3f} ms** | {iso_lo:+.3f} – {iso_hi:+.3f} ms | ≤ 0.2 ms |",
        f"| added mean latency per request: isolated requests, mean of the paired differences | "
        f"{iso_mean:+.3f} ms | {mean_lo:+.3f} – {mean_hi:+.3f} ms | — |",
        f"| added node CPU per request (per round) | **{cpu_added:+.3f} ms** | {cpu_added_lo:+.3f} – "
        f"{cpu_added_hi:+.3f} ms | ≤ 0.2 ms |",
        f"| added e2e p50 at {args.concurrency} streams (per round; a saturated node: throughput loss × e2e) | "
        f"{added:+.2f} ms | {added_lo:+.2f} – {added_hi:+.2f} ms | — |",
        "",
        "| node pair | throughput ratio (median) | isolated added latency (median) |",
        "|---|---|---|",
        *(f"| {i + 1} | {r:.3f} | {d:+.3f} ms |" for i, (r, d) in enumerate(per_pair)),
        "",
        "| counted in-process, 5,000 turns (no scheduling noise) | CPU per turn | share of the node's CPU per "
        "request (instrumentation off) |",
        "|---|---|---|",
        f"| on the request path (scheduling the rest) | **{cost['request_path']:.0f} µs** | "
        f"{cost['request_path'] / 1e3 / off_cpu_ms * 100:.2f} % |",
        f"| right after the response (status with the refusal check, metrics, masking, record building, "
        f"serialising) | **{cost['after_response']:.0f} µs** | "
        f"{cost['after_response'] / 1e3 / off_cpu_ms * 100:.2f} % |",
        f"| all of it, the writer thread's I/O included | **{cost['total']:.0f} µs** | "
        f"{cost['total'] / 1e3 / off_cpu_ms * 100:.2f} % |",
    ])
    print(table)
    if args.out:
        import json

        def rounded(x):
            if isinstance(x, float):
                return round(x, 4)
            if isinstance(x, (list, tuple)):
                return [rounded(v) for v in x]
            if isinstance(x, dict):
                return {k: rounded(v) for k, v in x.items()}
            return x

        Path(args.out).write_text(json.dumps(rounded({
            "argv": sys.argv[1:], "date": str(dt.date.today()),
            "rounds": {k: results[k] for k in ("on", "off")},
            "isolated": [dict(zip(("on_ms", "off_ms", "index", "first"), x)) for x in iso]}),
            separators=(",", ":")))
    if args.write_docs:
        write_block("overhead", "Instrumentation overhead", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
