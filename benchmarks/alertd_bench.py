"""Benchmark: one alertd evaluation cycle over 100 directly scraped nodes.

A child process serves 100 node expositions on 100 loopback ports (the node's real metric set,
built with ``inference.metrics.NodeMetrics`` when importable, plus 2 GPUs' gauges each), and
keeps changing them (turns, feedback, GPU load) while the benchmark runs. The parent runs the
real alertd cycle — concurrent HTTP scrape, exposition parse, rules, SQLite state machine and
outbox — and reports the median and p90 milliseconds per cycle, plus a breakdown.

    python benchmarks/alertd_bench.py [--nodes 100] [--cycles 40] [--json]

Target (issue 5): at most 100 ms per cycle.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _make_registry():
    from prometheus_client import CollectorRegistry, Gauge

    from contracts import metrics as M

    reg = CollectorRegistry()
    try:
        from inference.metrics import NodeMetrics

        nm = NodeMetrics(reg)

        def turn(rng):
            ttft = rng.lognormvariate(-1.6, 0.6)
            nm.observe_turn(rng.choice(("completed",) * 18 + ("error", "aborted")), ttft * 4, ttft, 0.02, 0.01,
                            rng.randint(20, 900), rng.randint(10, 400))
            if rng.random() < 0.05:
                nm.observe_feedback(rng.choice(("up", "down")))
            nm.set_queue_depth(rng.randint(0, 40), rng.randint(0, 5))
    except ImportError:  # the node part is not installed: same names, fewer series
        from prometheus_client import Counter, Histogram

        ttft_h = Histogram(M.TIME_TO_FIRST_TOKEN, "t", buckets=M.LATENCY_BUCKETS, registry=reg)
        e2e_h = Histogram(M.REQUEST_DURATION, "e", buckets=M.LATENCY_BUCKETS, registry=reg)
        req = Counter(M.REQUESTS_TOTAL[:-6], "r", ["status"], registry=reg)
        fb = Counter(M.FEEDBACK_TOTAL[:-6], "f", ["rating"], registry=reg)
        run = Gauge(M.REQUESTS_RUNNING, "r", registry=reg)

        def turn(rng):
            ttft = rng.lognormvariate(-1.6, 0.6)
            ttft_h.observe(ttft)
            e2e_h.observe(ttft * 4)
            req.labels(rng.choice(M.STATUSES)).inc()
            fb.labels(rng.choice(("up", "down"))).inc()
            run.set(rng.randint(0, 40))
    util = Gauge(M.GPU_UTILIZATION, "u", ["gpu"], registry=reg)
    mem = Gauge(M.GPU_MEMORY_USED, "m", ["gpu"], registry=reg)
    memt = Gauge(M.GPU_MEMORY_TOTAL, "m", ["gpu"], registry=reg)
    temp = Gauge(M.GPU_TEMPERATURE, "t", ["gpu"], registry=reg)
    power = Gauge(M.GPU_POWER, "p", ["gpu"], registry=reg)
    Gauge(M.GPU_AVAILABLE, "a", registry=reg).set(1)

    def gpus(rng):
        for g in ("0", "1"):
            util.labels(g).set(rng.uniform(0.3, 0.97))
            mem.labels(g).set(rng.uniform(10e9, 14e9))
            memt.labels(g).set(16e9)
            temp.labels(g).set(rng.uniform(50, 80))
            power.labels(g).set(rng.uniform(40, 70))
    return reg, turn, gpus


def serve(n: int, ports_q, stop_ev) -> None:
    """Child process: n loopback HTTP servers, one per node, exposition refreshed every 1 s."""
    from prometheus_client import generate_latest

    rng = random.Random(1)
    nodes = [_make_registry() for _ in range(n)]
    bodies: list[bytes] = [b""] * n

    def render():
        for i, (reg, turn, gpus) in enumerate(nodes):
            for _ in range(rng.randint(0, 6)):
                turn(rng)
            gpus(rng)
            text = generate_latest(reg)
            bodies[i] = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                         b"Content-Length: " + str(len(text)).encode() + b"\r\n\r\n" + text)

    class Proto(asyncio.Protocol):
        def __init__(self, i):
            self.i, self.buf = i, b""

        def connection_made(self, tr):
            self.tr = tr

        def data_received(self, data):
            self.buf += data
            while b"\r\n\r\n" in self.buf:
                _, self.buf = self.buf.split(b"\r\n\r\n", 1)
                self.tr.write(bodies[self.i])

    async def main():
        render()
        loop = asyncio.get_running_loop()
        ports = []
        for i in range(n):
            srv = await loop.create_server(lambda i=i: Proto(i), "127.0.0.1", 0)
            ports.append(srv.sockets[0].getsockname()[1])
        ports_q.put(ports)
        while not stop_ev.is_set():
            await asyncio.sleep(1.0)
            render()

    asyncio.run(main())


def run(n_nodes: int, cycles: int, warmup: int) -> dict:
    ctx = mp.get_context("spawn")
    q, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=serve, args=(n_nodes, q, stop), daemon=True)
    child.start()
    try:
        ports = q.get(timeout=120)
        from monitor.alerting.config import load_config
        from monitor.alerting.daemon import Alertd
        from monitor.alerting.rules import evaluate

        with tempfile.TemporaryDirectory() as tmp:
            cfg_path = Path(tmp) / "alerts.yaml"
            import yaml

            cfg_path.write_text(yaml.safe_dump({
                "nodes": [f"http://127.0.0.1:{p}/metrics" for p in ports],
                "evaluation_interval": "1s", "state_path": str(Path(tmp) / "state.sqlite"),
                "rules": {"p99_latency": {"window": "10s", "for": "0s"}, "gpu_utilization": {"for": "5s"},
                          "completion_rate": {"window": "10s", "min_samples": 5}, "scaling": {"window": "5s"}},
                "receivers": [{"type": "webhook", "url": "http://127.0.0.1:9/unused"}],
            }))
            cfg = load_config(cfg_path)
            d = Alertd(cfg)
            src = d.source
            total, fetch, evalt, alerts, cpu = [], [], [], [], []
            for i in range(warmup + cycles):
                c0 = time.process_time()
                t0 = time.perf_counter()
                d.evaluate_once()
                t1 = time.perf_counter()
                c1 = time.process_time()
                # breakdown: a scrape alone, and rules + state on the same observations
                if i >= warmup:
                    total.append((t1 - t0) * 1000)
                    cpu.append((c1 - c0) * 1000)
                    s0 = time.perf_counter()
                    obs = src.collect()
                    s1 = time.perf_counter()
                    evaluate(cfg, obs)
                    s2 = time.perf_counter()
                    fetch.append((s1 - s0) * 1000)
                    evalt.append((s2 - s1) * 1000)
                    alerts.append(len(d.store.alerts()))
                time.sleep(max(0.0, 0.25 - (time.perf_counter() - t0)))
            d.close()
    finally:
        stop.set()
        child.join(10)
        if child.is_alive():
            child.kill()

    def q(xs, p):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]

    return {
        "nodes": n_nodes, "cycles": cycles,
        "cycle_ms_median": round(statistics.median(total), 1), "cycle_ms_p90": round(q(total, 0.9), 1),
        "cycle_cpu_ms_median": round(statistics.median(cpu), 1),
        "scrape_parse_ms_median": round(statistics.median(fetch), 1),
        "rules_ms_median": round(statistics.median(evalt), 2),
        "alerts_open_median": statistics.median(alerts),
        "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--cycles", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=12, help="cycles to fill the windows before measuring")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = run(a.nodes, a.cycles, a.warmup)
    if a.json:
        print(json.dumps(res))
    else:
        print(f"alertd: one evaluation cycle over {res['nodes']} scraped nodes: median {res['cycle_ms_median']} ms, "
              f"p90 {res['cycle_ms_p90']} ms, CPU {res['cycle_cpu_ms_median']} ms (scrape+parse {res['scrape_parse_ms_median']} ms, rules "
              f"{res['rules_ms_median']} ms; {res['cycles']} cycles, {res['cpu_count']} CPUs, load {res['load_average']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
