"""Soak test: drive one node (tiny model, CPU by default) with NextChat-like multi-turn traffic
for ``--minutes`` (default 10) and record the node's RSS, open file descriptors, threads and
the client-side latency over time.

Pass criteria (exit status 1 when one fails):

* RSS growth after warm-up under ``--max-rss-growth`` (default 5 %): the median RSS of the
  last minute against the median of the first minute after the warm-up;
* no error other than the expected 429 (queue full; the node is run with a small queue so
  the client concurrency overflows it on purpose);
* no record lost: every 200 reply's ``X-Request-Id`` is in the session log, and
  ``seekwatch_log_dropped_total`` is 0;
* open file descriptors do not grow after warm-up (at most +8, for sockets in flight).

    python benchmarks/soak.py                          # 10 minutes, results to stdout + JSON
    python benchmarks/soak.py --minutes 1 --write-docs # short run, section into docs/reliability.md

Results: stdout, ``benchmarks/results/soak-<date>.json`` and, with ``--write-docs``, the section
between the ``<!-- soak -->`` markers of ``docs/reliability.md``.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import pct, write_block  # noqa: E402
from seekwatch.node_process import start_node  # noqa: E402  (the launcher the tests use)

CORPUS = [ln for ln in (ROOT / "inference" / "data" / "tiny_corpus.txt").read_text("utf-8").splitlines() if ln.strip()]
DOC = ROOT / "docs" / "reliability.md"


def proc_stats(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_mb": rss_kb / 1024, "fds": fds, "threads": threads}


class SoakStats:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.lat: list[tuple[float, float]] = []      # (t since start, e2e seconds) of 200s
        self.status: dict[str, int] = {}
        self.errors: list[str] = []
        self.ok_ids: set[str] = set()
        self.feedback = 0

    def count(self, key: str) -> None:
        self.status[key] = self.status.get(key, 0) + 1


async def client_loop(i: int, client: httpx.AsyncClient, stats: SoakStats, stop_at: float, max_tokens: int) -> None:
    rng = random.Random(i)
    history: list[dict] = []
    session = f"soak-{i}-0"
    n_conv = 0
    while time.monotonic() < stop_at:
        if len(history) >= 8 or not history:
            n_conv += 1
            session = f"soak-{i}-{n_conv}"
            history = [{"role": "system", "content": "你是客服助手。"}]
        history.append({"role": "user", "content": rng.choice(CORPUS)[:200]})
        stream = rng.random() < 0.5
        body = {"model": "deepseek-chat", "messages": history, "max_tokens": rng.randint(4, max_tokens),
                "stream": stream, "temperature": 0.7}
        t = time.monotonic()
        try:
            if stream:
                body["stream_options"] = {"include_usage": True}
                text = []
                async with client.stream("POST", "/v1/chat/completions", json=body,
                                         headers={"X-Session-Id": session}) as r:
                    code, rid = r.status_code, r.headers.get("x-request-id")
                    if code == 200:
                        # SSE lines end at CR/LF only; httpx's aiter_lines() also splits at
                        # U+2028/U+2029/U+0085, which the node leaves raw inside JSON strings
                        buf = b""
                        async for chunk in r.aiter_bytes():
                            buf += chunk
                            *lines, buf = buf.split(b"\n")
                            for line in lines:
                                if line.startswith(b"data: {"):
                                    ch = json.loads(line[6:])
                                    if ch.get("choices"):
                                        text.append(ch["choices"][0]["delta"].get("content") or "")
                    else:
                        await r.aread()
                reply = "".join(text)
            else:
                r = await client.post("/v1/chat/completions", json=body, headers={"X-Session-Id": session})
                code, rid = r.status_code, r.headers.get("x-request-id")
                reply = r.json()["choices"][0]["message"]["content"] if code == 200 else ""
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            stats.count("exception")
            stats.errors.append(f"{type(exc).__name__}: {exc}")
            history.pop()
            await asyncio.sleep(0.5)
            continue
        stats.count(str(code))
        if code == 200:
            stats.lat.append((t - stats.t0, time.monotonic() - t))
            stats.ok_ids.add(rid)
            history.append({"role": "assistant", "content": reply})
            if rng.random() < 0.1:
                fb = await client.post("/v1/feedback", json={"request_id": rid, "rating": rng.choice(["up", "down"])})
                stats.count(f"feedback-{fb.status_code}")
                stats.feedback += 1
        else:
            history.pop()
            if code != 429:
                stats.errors.append(f"HTTP {code}")
            await asyncio.sleep(0.2 + rng.random() * 0.3)


async def sampler(pid: int, samples: list[dict], t0: float, stop_at: float, every: float) -> None:
    while time.monotonic() < stop_at:
        s = proc_stats(pid)
        s["t"] = time.monotonic() - t0
        samples.append(s)
        await asyncio.sleep(every)


def metric_value(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def logged_request_ids(log_dir: Path) -> set[str]:
    ids = set()
    for f in sorted(log_dir.rglob("*")):
        if not f.is_file():
            continue
        # split on b"\n" only: str.splitlines() would also split at U+2028/U+2029/U+0085, which
        # json.dumps(ensure_ascii=False) leaves unescaped inside strings (random-weight models emit them)
        for line in f.read_bytes().split(b"\n"):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("event", {}).get("dataset") == "seekwatch.session":
                ids.add(rec.get("request_id"))
    return ids


def window_median(samples: list[dict], key: str, lo: float, hi: float) -> float:
    vals = [s[key] for s in samples if lo <= s["t"] < hi]
    return statistics.median(vals) if vals else float("nan")


async def soak(args, node) -> dict:
    stats = SoakStats()
    duration = args.minutes * 60
    stop_at = stats.t0 + duration
    samples: list[dict] = []
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=node.base_url, timeout=120, limits=limits, trust_env=False) as client:
        tasks = [asyncio.create_task(client_loop(i, client, stats, stop_at, args.max_tokens))
                 for i in range(args.concurrency)]
        tasks.append(asyncio.create_task(sampler(node.proc.pid, samples, stats.t0, stop_at, args.sample_every)))
        last_print = 0.0
        while not all(t.done() for t in tasks[:-1]):
            await asyncio.sleep(1)
            el = time.monotonic() - stats.t0
            if args.progress and el - last_print >= 60 and samples:
                last_print = el
                print(f"  {el / 60:4.1f} min  rss {samples[-1]['rss_mb']:.1f} MB  fds {samples[-1]['fds']}  "
                      f"ok {stats.status.get('200', 0)}  429 {stats.status.get('429', 0)}", file=sys.stderr, flush=True)
        await asyncio.gather(*tasks)
        samples.append({**proc_stats(node.proc.pid), "t": time.monotonic() - stats.t0})
        metrics = (await client.get("/metrics")).text
    # the writer is off the request path: give it a moment, then stop the node to flush
    node.stop()
    logged = logged_request_ids(node.log_dir)
    warm = args.warmup_minutes * 60
    base_rss = window_median(samples, "rss_mb", warm, warm + 60)
    end_rss = window_median(samples, "rss_mb", duration - 60, duration + 60)
    base_fds = max((s["fds"] for s in samples if warm <= s["t"] < warm + 60), default=0)
    end_fds = samples[-1]["fds"] if samples else 0
    lat_ok = [x for _, x in stats.lat]
    per_min = []
    for m in range(int(args.minutes + 0.999)):
        xs = [x for t, x in stats.lat if m * 60 <= t < (m + 1) * 60]
        ss = [s for s in samples if m * 60 <= s["t"] < (m + 1) * 60]
        per_min.append({"minute": m + 1, "requests": len(xs), "p50_s": pct(xs, 0.5), "p99_s": pct(xs, 0.99),
                        "rss_mb": statistics.median([s["rss_mb"] for s in ss]) if ss else None,
                        "fds": max((s["fds"] for s in ss), default=None),
                        "threads": max((s["threads"] for s in ss), default=None)})
    lost = sorted(stats.ok_ids - logged)
    res = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "cpu_count": os.cpu_count(), "minutes": args.minutes,
        "warmup_minutes": args.warmup_minutes, "concurrency": args.concurrency,
        "node_flags": node.args, "requests_ok": stats.status.get("200", 0),
        "requests_429": stats.status.get("429", 0), "status_counts": stats.status,
        "unexpected_errors": len(stats.errors), "error_samples": stats.errors[:10],
        "feedback_posts": stats.feedback,
        "latency_p50_s": pct(lat_ok, 0.5), "latency_p99_s": pct(lat_ok, 0.99),
        "rss_after_warmup_mb": base_rss, "rss_end_mb": end_rss,
        "rss_growth": (end_rss - base_rss) / base_rss if base_rss == base_rss and base_rss else float("nan"),
        "rss_peak_mb": max((s["rss_mb"] for s in samples), default=None),
        "fds_after_warmup": base_fds, "fds_end": end_fds,
        "records_logged": len(logged), "records_lost": len(lost), "lost_samples": lost[:5],
        "log_dropped_total": metric_value(metrics, "seekwatch_log_dropped_total"),
        "log_records_total": metric_value(metrics, "seekwatch_log_records_total"),
        "per_minute": per_min, "samples": samples,
    }
    res["checks"] = {
        "rss_growth_under_limit": res["rss_growth"] < args.max_rss_growth,
        "no_unexpected_errors": res["unexpected_errors"] == 0,
        "no_record_lost": res["records_lost"] == 0 and res["log_dropped_total"] == 0,
        "fds_stable": end_fds <= base_fds + 8,
    }
    res["passed"] = all(res["checks"].values())
    return res


def markdown(res: dict) -> str:
    f = lambda x, n=1: "–" if x is None or x != x else f"{x:.{n}f}"  # noqa: E731
    lines = [
        f"Run {res['date']} on `{res['host']}` ({res['cpu_count']} CPUs, shared), "
        f"`python benchmarks/soak.py --minutes {res['minutes']:g}`: {res['concurrency']} concurrent "
        f"multi-turn clients (half streaming, 10 % feedback) against node flags `{' '.join('DIR' if a.startswith('/') else a for a in res['node_flags'])}`; "
        f"warm-up {res['warmup_minutes']:g} min.",
        "",
        "| check | figure | pass |",
        "|---|---|---|",
        f"| RSS growth after warm-up (< 5 %) | {f(res['rss_after_warmup_mb'])} → {f(res['rss_end_mb'])} MB "
        f"({res['rss_growth'] * 100:+.2f} %), peak {f(res['rss_peak_mb'])} MB | {'yes' if res['checks']['rss_growth_under_limit'] else '**no**'} |",
        f"| open file descriptors | {res['fds_after_warmup']} after warm-up → {res['fds_end']} at the end | "
        f"{'yes' if res['checks']['fds_stable'] else '**no**'} |",
        f"| requests answered 200 / 429 (expected, queue full) | {res['requests_ok']} / {res['requests_429']} | – |",
        f"| unexpected errors (not 429) | {res['unexpected_errors']} | {'yes' if res['checks']['no_unexpected_errors'] else '**no**'} |",
        f"| records lost (200 replies missing from the session log; `log_dropped_total`) | "
        f"{res['records_lost']} of {res['requests_ok']}; {res['log_dropped_total']:g} | {'yes' if res['checks']['no_record_lost'] else '**no**'} |",
        f"| client latency p50 / p99 (whole run) | {f(res['latency_p50_s'], 2)} s / {f(res['latency_p99_s'], 2)} s | – |",
        "",
        "| minute | 200s | p50 s | p99 s | RSS MB (median) | fds (max) | threads (max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in res["per_minute"]:
        lines.append(f"| {m['minute']} | {m['requests']} | {f(m['p50_s'], 2)} | {f(m['p99_s'], 2)} | "
                     f"{f(m['rss_mb'])} | {m['fds'] if m['fds'] is not None else '–'} | {m['threads'] if m['threads'] is not None else '–'} |")
    lines.append("")
    lines.append(f"Result: **{'passed' if res['passed'] else 'FAILED'}**.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--warmup-minutes", type=float, help="default: 2 (or a fifth of a run shorter than 10 min)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--max-queue", type=int, default=2, help="node's --max-queue: small, so 429s happen (default 2)")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--sample-every", type=float, default=2.0, help="seconds between RSS/fd samples")
    p.add_argument("--max-rss-growth", type=float, default=0.05)
    p.add_argument("--model", help="model folder (default: make a tiny one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--write-docs", action="store_true", help="write the section into docs/reliability.md")
    p.add_argument("--json", metavar="PATH", help="results JSON (default benchmarks/results/soak-<date>.json)")
    p.add_argument("--quiet", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.warmup_minutes is None:
        args.warmup_minutes = 2.0 if args.minutes >= 10 else args.minutes / 5
    if args.minutes * 60 < args.warmup_minutes * 60 + 60:
        p.error("--minutes must leave at least one minute after the warm-up")
    with tempfile.TemporaryDirectory(prefix="seekwatch-soak-") as tmp:
        tmp = Path(tmp)
        model = args.model
        if not model:
            model = str(tmp / "tiny")
            subprocess.run([sys.executable, "-m", "seekwatch", "make-tiny-model", model, "--weights", "random"], check=True,
                           stdout=subprocess.DEVNULL)
        node = start_node(tmp, "--model", model, "--device", args.device, "--max-batch", str(args.max_batch),
                          "--max-queue", str(args.max_queue), "--log-level", "warning")
        try:
            res = asyncio.run(soak(args, node))
        finally:
            node.stop()
    text = markdown(res)
    print(text)
    out = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / f"soak-{res['date'][:10]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str), "utf-8")
    print(f"\nresults: {out}", file=sys.stderr)
    if args.write_docs:
        write_block("soak", "Soak", text, DOC)
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
