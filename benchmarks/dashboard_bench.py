"""Benchmark: the first render of the dashboard's Overview page over N turns (default 1 million).

    python benchmarks/dashboard_bench.py [--turns 1000000] [--dir DIR] [--engine-url URL]

For each source, a fresh Python process runs the Overview page once under Streamlit's AppTest
(cold: nothing cached, every log line parsed / every aggregation run), then once more (warm:
the cached source, an incremental refresh that finds nothing new), and reports wall time of
each render and the process's peak RSS. A baseline process that renders an empty log dir gives
the memory Streamlit + pandas + pyarrow take before any data.

Targets (issue 6): engine <= 2 s, JSON lines <= 5 s, memory <= 1 GB.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

END = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)
SPAN_S = 23 * 3600  # all turns inside the Overview's default 24 h range (the hardest case)

CHILD = r"""
import json, os, resource, sys, time
from streamlit.testing.v1 import AppTest
page = sys.argv[1]
out = {}
t = time.perf_counter()
at = AppTest.from_file(page, default_timeout=600)
at.run()
out["first_s"] = time.perf_counter() - t
assert not at.exception, at.exception
out["metrics"] = {m.label: m.value for m in at.metric}
t = time.perf_counter()
at.run()
out["second_s"] = time.perf_counter() - t
from dashboards import ui
src = ui.log_source()
th = getattr(src, "_cache_thread", None)
if th is not None:
    th.join()  # let the parse cache be written before the process exits
out["cached_files"] = len(getattr(src, "_cached", ()))
# VmHWM: this process's own peak RSS (ru_maxrss would carry the parent's over fork+exec)
out["peak_rss_mib"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print("RESULT " + json.dumps(out, ensure_ascii=False))
"""


def render(env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEEKWATCH_DASHBOARD_")}
    env.update(env_extra, SEEKWATCH_DASHBOARD_NOW=END.isoformat(), PYTHONPATH=str(ROOT))
    page = str(ROOT / "dashboards" / "views" / "overview.py")
    p = subprocess.run([sys.executable, "-c", CHILD, page], env=env, capture_output=True, text=True, timeout=1800)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(p.stdout[-2000:] + p.stderr[-2000:])
    return json.loads(line[7:])


def generate(d: Path, n: int) -> tuple[float, int]:
    from tests.dashboard.gen import generate_ordered as gen, write_logs

    marker = d / f".generated-ordered-{n}"
    if not marker.exists():
        t = time.perf_counter()
        write_logs(d, gen(n, END, span_s=SPAN_S, seed=42), per_file=100_000)
        marker.write_text(f"{time.perf_counter() - t:.1f}")
    size = sum(p.stat().st_size for p in d.glob("*.jsonl"))
    return float(marker.read_text()), size


def index_into_engine(url: str, d: Path, tag: str) -> float:
    from contracts.logstore import FEEDBACK_STREAM, SESSION_STREAM, StoreClient

    t = time.perf_counter()
    with StoreClient(url, timeout=600) as c:
        for f in sorted(d.glob("*.jsonl")):
            batch: list[str] = []
            for line in f.open(encoding="utf-8"):
                r = json.loads(line)
                r["host"]["name"] = tag
                fb = r["event"]["dataset"] == "seekwatch.feedback"
                batch.append(json.dumps({"create": {"_index": FEEDBACK_STREAM if fb else SESSION_STREAM,
                                                    "_id": f"{tag}-{r['feedback_id'] if fb else r['request_id']}"}}))
                batch.append(json.dumps(r, ensure_ascii=False))
                if len(batch) >= 10000:
                    c.bulk(("\n".join(batch) + "\n").encode())
                    batch = []
            if batch:
                c.bulk(("\n".join(batch) + "\n").encode())
        c.refresh()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, help="log dir to (re)use; default: a temp dir")
    ap.add_argument("--engine-url", help="also benchmark the search-engine source (indexes the turns first)")
    ap.add_argument("--start-engine", action="store_true",
                    help="start a local OpenSearch (monitor.logstore.launcher, seekwatch es-setup) for --engine-url")
    ap.add_argument("--engine-heap", default="2g")
    ap.add_argument("--skip-jsonl", action="store_true", help="only the engine measurement")
    ap.add_argument("--engine-tag", help="the turns are already indexed under this host.name: skip indexing")
    ap.add_argument("--runs", type=int, default=3, help="repeat each measurement (the machine may be shared)")
    args = ap.parse_args()
    engine = None
    if args.start_engine:
        from contracts.logstore import StoreClient
        from monitor.logstore.launcher import LogStoreServer
        from monitor.logstore.setup import install

        engine_dir = Path(tempfile.mkdtemp(prefix="sw-bench-engine-"))
        engine = LogStoreServer(engine_dir, port=0, heap=args.engine_heap, max_heap=args.engine_heap)
        engine.start()
        with StoreClient(engine.url) as c:
            install(c)
        args.engine_url = engine.url
    try:
        return _bench(args)
    finally:
        if engine is not None:
            engine.stop()
            import shutil

            shutil.rmtree(engine_dir, ignore_errors=True)


def _bench(args) -> int:
    import shutil

    scratch = Path(tempfile.mkdtemp(prefix="sw-bench-scratch-"))
    try:
        return _bench_in(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _bench_in(args, scratch: Path) -> int:
    d = args.dir or scratch / "logs"
    d.mkdir(parents=True, exist_ok=True)
    gen_s, size = generate(d, args.turns)
    empty = scratch / "empty"
    empty.mkdir()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{args.turns:,} turns in {len(list(d.glob('*.jsonl')))} files, {size / 2**20:,.0f} MiB (generated in {gen_s:.0f} s)")
    base = render({"SEEKWATCH_DASHBOARD_LOGS": str(empty), "SEEKWATCH_DASHBOARD_CACHE": "off"})
    print(f"baseline (empty log dir): first render {base['first_s']:.2f} s, peak RSS {base['peak_rss_mib']:,.0f} MiB")
    cache = scratch / "cache"
    for run in range(0 if args.skip_jsonl else args.runs):
        r = render({"SEEKWATCH_DASHBOARD_LOGS": str(d), "SEEKWATCH_DASHBOARD_CACHE": "off"})
        print(f"JSON lines, cold (every line parsed): first render {r['first_s']:.2f} s, second {r['second_s']:.2f} s, "
              f"peak RSS {r['peak_rss_mib']:,.0f} MiB; Requests = {r['metrics'].get('请求数 Requests')}")
    if not args.skip_jsonl:
        render({"SEEKWATCH_DASHBOARD_LOGS": str(d), "SEEKWATCH_DASHBOARD_CACHE": str(cache)})  # fills the cache
    for run in range(0 if args.skip_jsonl else args.runs):
        r = render({"SEEKWATCH_DASHBOARD_LOGS": str(d), "SEEKWATCH_DASHBOARD_CACHE": str(cache)})
        print(f"JSON lines, restart with parse cache ({r['cached_files']} files from cache): first render "
              f"{r['first_s']:.2f} s, second {r['second_s']:.2f} s, peak RSS {r['peak_rss_mib']:,.0f} MiB; "
              f"Requests = {r['metrics'].get('请求数 Requests')}")
    if args.engine_url:
        tag = args.engine_tag or f"bench-{int(time.time())}"
        if not args.engine_tag:
            idx_s = index_into_engine(args.engine_url, d, tag)
            print(f"indexed into {args.engine_url} in {idx_s:.0f} s (host.name {tag})")
        for run in range(args.runs):
            e = render({"SEEKWATCH_DASHBOARD_URL": args.engine_url, "SEEKWATCH_DASHBOARD_HOST_NAME": tag})
            print(f"engine: first render {e['first_s']:.2f} s, second {e['second_s']:.2f} s, "
                  f"peak RSS {e['peak_rss_mib']:,.0f} MiB; Requests = {e['metrics'].get('请求数 Requests')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
