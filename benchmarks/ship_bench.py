"""Shipper throughput beside a bare ``_bulk`` loader, in one run, against one engine.

    ~/.cache/seekwatch/venv/bin/python benchmarks/ship_bench.py [--docs 20000] [--rounds 3]
        [--batch 1000] [--url URL]

Without ``--url`` it starts the bundled OpenSearch (search-engine/, 512 MiB-1 GiB heap) in a
temporary directory and installs the template and pipeline. Both contenders send the same
kind of records (tests/logstore/gen.py), the same batch size, the same ``create`` action
with the request id as ``_id``, into the same data stream through the same default ingest
pipeline; each round uses fresh ids so neither meets the other's documents. The bare loader
is the floor of the work: read the file, split lines, pull the id out with json, POST. The
shipper adds file tracking, per-item error handling and an fsynced checkpoint per batch.
Rounds alternate which goes first (bare then shipper, shipper then bare, ...) and the median of each is reported.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contracts.logstore import SESSION_STREAM, StoreClient  # noqa: E402
from monitor.logstore.shipper import Shipper  # noqa: E402
from tests.logstore.gen import append_lines, records  # noqa: E402


def bare_load(client: StoreClient, path: Path, batch: int) -> int:
    n = 0
    lines: list[bytes] = []

    def send(chunk: list[bytes]) -> None:
        body = b"".join(
            b'{"create":{"_index":"%s","_id":"%s"}}\n%s\n' % (SESSION_STREAM.encode(), json.loads(l)["request_id"].encode(), l)
            for l in chunk)
        resp = client.bulk(body)
        if resp.get("errors"):
            bad = [i for i in resp["items"] if i["create"]["status"] >= 300]
            raise SystemExit(f"bare loader: {len(bad)} items failed, e.g. {bad[0]}")

    with open(path, "rb") as fh:
        for line in fh:
            lines.append(line.rstrip(b"\n"))
            if len(lines) >= batch:
                send(lines)
                n += len(lines)
                lines = []
    if lines:
        send(lines)
        n += len(lines)
    return n


def shipper_load(client: StoreClient, logs: Path, batch: int) -> int:
    s = Shipper(logs, client, batch_docs=batch)
    stats = s.run(once=True)
    assert stats.dead_lettered == 0 and stats.duplicates == 0, stats
    return stats.shipped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--url")
    args = ap.parse_args(argv)

    engine = None
    work = Path(tempfile.mkdtemp(prefix="ship-bench-"))
    if args.url:
        url = args.url
    else:
        from monitor.logstore.launcher import LogStoreServer

        engine = LogStoreServer(work / "engine", port=0, heap="512m", max_heap="1g")
        url = engine.start()
    try:
        with StoreClient(url, timeout=120) as client:
            from monitor.logstore.setup import install

            install(client)
            info = client.info()
            results: dict[str, list[float]] = {"bare _bulk loader": [], "seekwatch ship": []}
            cpu: dict[str, list[float]] = {k: [] for k in results}  # client CPU seconds per 10k docs
            # warm-up (JIT, pipeline compilation, index creation), not measured
            warm = work / "warm"
            warm.mkdir()
            append_lines(warm / "w.jsonl", records(5000, seed=1, tag="warm"))
            bare_load(client, warm / "w.jsonl", args.batch)
            (work / "warm2").mkdir()
            append_lines(work / "warm2" / "w.jsonl", records(5000, seed=2, tag="warmup"))
            shipper_load(client, work / "warm2", args.batch)
            for r in range(args.rounds):
                order = list(results) if r % 2 == 0 else list(results)[::-1]  # no order bias
                for name in order:
                    d = work / f"{name.split()[0]}-{r}"
                    d.mkdir()
                    tag = f"b{r}{name[0]}"
                    append_lines(d / "s.jsonl", records(args.docs, seed=100 + r, tag=tag))
                    t0, c0 = time.perf_counter(), time.process_time()
                    n = bare_load(client, d / "s.jsonl", args.batch) if name.startswith("bare") \
                        else shipper_load(client, d, args.batch)
                    dt = time.perf_counter() - t0
                    cpu[name].append((time.process_time() - c0) / n * 10_000)
                    assert n == args.docs, (name, n)
                    results[name].append(n / dt)
                    print(f"round {r + 1} {name}: {n} docs in {dt:.2f}s = {n / dt:,.0f} docs/s", flush=True)
            bare = statistics.median(results["bare _bulk loader"])
            ship = statistics.median(results["seekwatch ship"])
            print()
            print(f"engine: {info.distribution} {info.version} (embedded, one JVM, heap 512m-1g)" if engine
                  else f"engine: {info.distribution} {info.version} at {url}")
            print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
                  f"{args.docs} docs/round, batch {args.batch}, {args.rounds} rounds")
            print("| loader | median docs/s | rounds (docs/s) | client CPU s per 10k docs (median) |")
            print("|---|---:|---|---:|")
            for name, vals in results.items():
                print(f"| {name} | {statistics.median(vals):,.0f} | {', '.join(f'{v:,.0f}' for v in vals)} "
                      f"| {statistics.median(cpu[name]):.2f} |")
            print(f"\nshipper / bare = {ship / bare:.1%} (target: at least 80 %)")
    finally:
        if engine is not None:
            engine.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
