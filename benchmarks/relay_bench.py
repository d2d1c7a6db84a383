"""What the node adds in front of another engine (``--engine upstream``), on the CPU.

A fast streaming fake upstream (an OpenAI-compatible ``/v1/chat/completions`` that streams a
fixed token as fast as the socket takes it, in its own process on loopback) is measured
directly and through the node, in one run:

* **1 stream**: requests alternate between direct and through the node; the added time to
  first token is the difference of the two medians (and the median of paired differences);
* **256 concurrent streams**: aggregate tokens/s direct and through the node, and the node
  process's CPU time (all threads, from the kernel's accounting) per relayed token;
* **256 paced streams**: the same against a second fake upstream that sends every open
  stream one token every 25 ms (``--paced-step-ms``), as a GPU engine's decode steps do. A
  fast upstream's reads hold many tokens each; a paced one's hold one, so this is the cost
  per token of relaying a real engine at full batch.

With two cores or more, the node runs on a core of its own and the load generator and the
fake upstream share another (``--no-pin``: all anywhere), so the node's figures are its own
work, not its contention with them.

    python benchmarks/relay_bench.py                    # 1 and 256 streams, 200 tokens each
    python benchmarks/relay_bench.py --write-docs       # also into docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import AsyncIterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import cpu_split, read_events  # noqa: E402

CHUNK = (b'data: {"id":"relay","object":"chat.completion.chunk","created":0,"model":"fake",'
         b'"choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}\n\n')


#: how long the load generator keeps an idle connection: under the node's (uvicorn's) 5 s, so
#: it never sends a request on a connection the node is closing at that moment
KEEPALIVE_S = 2.0


def _frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _serve_upstream(port: int, step_ms: float = 0.0) -> None:
    """HTTP/1.1 with keep-alive and chunked SSE: what vLLM's server sends, minus the model.

    ``step_ms`` 0: each reply as fast as the socket takes it. Otherwise paced like an engine
    that decodes every running stream together: every ``step_ms`` each open reply gets its
    next token, all in the same moment (what a GPU engine's decode step looks like on the
    wire: one token per stream per step, so each of the node's reads holds one token)."""
    token = _frame(CHUNK)
    tick: asyncio.Future | None = None

    async def ticker() -> None:
        nonlocal tick
        loop = asyncio.get_running_loop()
        while True:
            tick = loop.create_future()
            await asyncio.sleep(step_ms / 1e3)
            tick.set_result(None)

    if step_ms:
        asyncio.create_task(ticker())

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                length = 0
                while True:
                    header = await reader.readline()
                    if header in (b"\r\n", b""):
                        break
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = json.loads(await reader.readexactly(length)) if length else {}
                n = int(body.get("max_tokens") or 200)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                for i in range(n):
                    if step_ms:
                        await asyncio.shield(tick)
                    writer.write(token)
                    if step_ms or i % 8 == 7:
                        await writer.drain()
                end = {"id": "relay", "object": "chat.completion.chunk", "created": 0, "model": "fake",
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                       "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}}
                writer.write(_frame(b"data: " + json.dumps(end).encode() + b"\n\n"))
                writer.write(_frame(b"data: [DONE]\n\n") + b"0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


async def one_stream(session, url: str, max_tokens: int) -> dict:
    """One streamed request through an aiohttp session: the load generator reads with the
    client the node relays with, so that on a shared core it takes as little as it can
    from the fake upstream beside it (httpx took about three times the CPU per token, and
    the paced upstream then fell behind its own pace)."""
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    async with session.post(url, json=body) as r:
        if r.status != 200:
            await r.read()
            return {"error": r.status}
        read_at = [t0]
        ttft, tokens = await read_events(_events(r, read_at), t0, lambda: read_at[0])
        await r.read()  # the end of the chunked body: the connection goes back to the pool
    return {"ttft": ttft, "e2e": time.perf_counter() - t0, "tokens": tokens}


async def _events(response, read_at: list[float]) -> AsyncIterator[str]:
    """The ``data`` of an aiohttp response's events, through the one SSE reader's decoder;
    ``read_at[0]`` is when the read that carried them returned. A fast upstream's reply
    arrives directly in a few large reads; stamping the first token after its whole read
    is decoded would add that decoding to the direct figure only (the node sends its
    first token alone) and flatter the node."""
    from contracts.sse import DataDecoder

    events = DataDecoder()
    while not events.done and (data := await response.content.readany()):
        read_at[0] = time.perf_counter()
        for item in events.feed(data):
            yield item


def _session(connections: int):
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=KEEPALIVE_S),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=300))


def children(pid: int) -> list[int]:
    """The direct children of a process (the node's engine process, with ``--engine-process``)."""
    import psutil

    return [c.pid for c in psutil.Process(pid).children()]


GC_PROBE = ROOT / "benchmarks" / "gc_probe"


def gc_pauses(probe_dir: Path, since: float, until: float) -> dict:
    """The node's (and its engine process's) garbage-collector pauses over 1 ms between two
    wall-clock times, as written by ``benchmarks/gc_probe`` (``--gc-probe``)."""
    time.sleep(0.6)  # the probe writes every half second
    pauses = [took for f in probe_dir.glob("gc-*.json") for at, _gen, took in json.loads(f.read_text())
              if since <= at <= until]
    return {"gc_pauses_over_1ms": len(pauses), "gc_pause_s": sum(pauses),
            "gc_longest_pause_ms": max(pauses, default=0.0) * 1e3}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads, from /proc (clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def single(direct: str, node: str, requests: int, tokens: int) -> dict:
    pairs = []
    async with _session(8) as client:
        for _ in range(10):  # warm-up: connections, first-request paths
            await one_stream(client, direct, tokens)
            await one_stream(client, node, tokens)
        for i in range(requests):
            first, second = (direct, node) if i % 2 == 0 else (node, direct)
            a = await one_stream(client, first, tokens)
            b = await one_stream(client, second, tokens)
            d, n = (a, b) if first == direct else (b, a)
            pairs.append((d, n))
    td = [d["ttft"] for d, _ in pairs]
    tn = [n["ttft"] for _, n in pairs]
    return {"requests": requests, "tokens": tokens,
            "ttft_p50_direct_ms": statistics.median(td) * 1e3, "ttft_p50_node_ms": statistics.median(tn) * 1e3,
            "added_ttft_p50_ms": (statistics.median(tn) - statistics.median(td)) * 1e3,
            "added_ttft_paired_median_ms": statistics.median(n - d for d, n in zip(td, tn)) * 1e3,
            "e2e_p50_direct_ms": statistics.median(d["e2e"] for d, _ in pairs) * 1e3,
            "e2e_p50_node_ms": statistics.median(n["e2e"] for _, n in pairs) * 1e3}


async def concurrent(url: str, streams: int, requests: int, tokens: int, pid: int | None,
                     gc_probe: Path | None = None) -> dict:
    import aiohttp

    async with _session(streams + 8) as client:
        sem = asyncio.Semaphore(streams)

        async def guarded():
            async with sem:
                try:
                    return await one_stream(client, url, tokens)
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                    # a pooled connection the server closed after its keep-alive timeout
                    # (uvicorn: 5 s) while the warm-up's slowest streams ran: one retry
                    return await one_stream(client, url, tokens)

        await asyncio.gather(*(guarded() for _ in range(streams)))  # warm-up: open the connections
        kids = children(pid) if pid else []
        cpu0 = cpu_seconds(pid) if pid else 0.0
        kids0 = sum(cpu_seconds(k) for k in kids)
        began = time.time()
        t0 = time.perf_counter()
        results = await asyncio.gather(*(guarded() for _ in range(requests)))
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(pid) - cpu0 if pid else None
        kids_cpu = sum(cpu_seconds(k) for k in kids) - kids0
        ended = time.time()
    ok = [r for r in results if "error" not in r]
    total = sum(r["tokens"] for r in ok)
    out = {"streams": streams, "requests": requests, "errors": len(results) - len(ok), "tokens": total,
           "aggregate_tok_s": total / wall, "wall_s": wall,
           "ttft_p50_ms": statistics.median(r["ttft"] for r in ok) * 1e3}
    if cpu is not None:
        out.update(node_cpu_s=cpu, node_cpu_us_per_token=cpu / total * 1e6)
    if kids:  # the engine's process: the relaying itself, apart from the node's HTTP side
        out.update(engine_process_cpu_s=kids_cpu, engine_process_cpu_us_per_token=kids_cpu / total * 1e6)
    if pid and gc_probe is not None:
        out.update(gc_pauses(gc_probe, began, ended))
    return out


def markdown(r: dict) -> str:
    s, c = r["single"], r["concurrent"]
    lines = [
        f"Measured {r['date']} on {r['device']} ({r['machine']}), Python {r['python']}; fake upstream: "
        f"{r['tokens']} tokens per request, streamed as fast as the socket takes them, in its own process"
        + (", the relay in an engine process of its own" if r.get("engine_process") else "")
        + ("; the node on a core of its own, the load generator and the fake upstream on another." if r.get("pinned")
           else "."),
        f"Command: `{r['command']}`", "",
        "| | direct | through the node | added | target |",
        "|---|---|---|---|---|",
        f"| 1 stream, TTFT p50 ({s['requests']} alternating pairs) | {s['ttft_p50_direct_ms']:.2f} ms | "
        f"{s['ttft_p50_node_ms']:.2f} ms | {s['added_ttft_p50_ms']:+.2f} ms (paired median "
        f"{s['added_ttft_paired_median_ms']:+.2f} ms) | ≤ 1 ms |",
        f"| 1 stream, E2E p50 | {s['e2e_p50_direct_ms']:.2f} ms | {s['e2e_p50_node_ms']:.2f} ms | "
        f"{s['e2e_p50_node_ms'] - s['e2e_p50_direct_ms']:+.2f} ms | – |",
    ]

    def concurrent_rows(both: dict, what: str, detail: str) -> list[str]:
        d, n = both["direct"], both["node"]
        rows = [f"| {n['streams']} streams{what} ({detail}{n['requests']} requests), aggregate tok/s | "
                f"{d['aggregate_tok_s']:,.0f} | {n['aggregate_tok_s']:,.0f} | – | – |"]
        if "gc_pauses_over_1ms" in n:
            rows.append(f"| {n['streams']} streams{what}, garbage-collector pauses over 1 ms (node and engine "
                        f"process) | – | {n['gc_pauses_over_1ms']}, {n['gc_pause_s'] * 1e3:.0f} ms in all, the longest "
                        f"{n['gc_longest_pause_ms']:.1f} ms | – | – |")
        if "engine_process_cpu_s" not in n:
            return rows + [f"| {n['streams']} streams{what}, node CPU per relayed token | – | "
                           f"{n['node_cpu_us_per_token']:.1f} µs ({n['node_cpu_s']:.1f} s for {n['tokens']:,} tokens) "
                           f"| – | ≤ 20 µs |"]
        total = n["node_cpu_us_per_token"] + n["engine_process_cpu_us_per_token"]
        return rows + [f"| {n['streams']} streams{what}, node CPU per relayed token: HTTP side + engine process | – | "
                       f"{n['node_cpu_us_per_token']:.1f} + {n['engine_process_cpu_us_per_token']:.1f} = "
                       f"{total:.1f} µs ({n['tokens']:,} tokens) | – | ≤ 20 µs |"]

    lines += concurrent_rows(c, "", "")
    if r.get("paced"):
        lines += concurrent_rows(r["paced"], " paced", f"one token per stream every {r['paced']['step_ms']:g} ms, ")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--upstream-step-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--paced-step-ms", type=float, default=25.0,
                    help="also run --streams streams against an upstream that sends every stream one token every "
                         "this many ms, as a GPU engine's decode steps do (0: skip)")
    ap.add_argument("--tokens", type=int, default=200, help="tokens per request")
    ap.add_argument("--single-requests", type=int, default=100, help="alternating pairs at 1 stream")
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--requests", type=int, default=1024, help="requests at --streams concurrency")
    ap.add_argument("--no-pin", action="store_true", help="do not put the node on a core of its own")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--engine-process", action="store_true",
                    help="run the relay in an engine process of its own (serve --engine-process): the node's HTTP "
                         "side, the same as in front of the GPU engine, is then measured apart from the relaying")
    ap.add_argument("--gc-probe", action="store_true",
                    help="also count the node's garbage-collector pauses over 1 ms (benchmarks/gc_probe)")
    ap.add_argument("--out", help="JSON results (default benchmarks/results/relay-<date>.json)")
    args = ap.parse_args()
    if args.serve_upstream:
        asyncio.run(_serve_upstream(args.serve_upstream, args.upstream_step_ms))
        return 0

    import httpx

    from contracts.supervisor import ProcessSpec, free_port, start
    from seekwatch.node_process import start_node

    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    client_cpus, node_cpus = cpu_split(args.no_pin)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)

    @contextlib.contextmanager
    def upstream_and_node(step_ms: float):
        """A fake upstream (its own process, beside the load generator) and a node in front
        of it: (direct URL, node, the node's GC probe folder or None)."""
        port = free_port()
        base = f"http://127.0.0.1:{port}/v1"
        upstream = start(ProcessSpec(name="fake upstream", output=tmp / f"upstream-{port}.out",
                                     cpus=frozenset(client_cpus) if client_cpus else None,
                                     argv=[sys.executable, __file__, "--serve-upstream", str(port),
                                           "--upstream-step-ms", str(step_ms)]))

        def answers() -> bool:
            try:
                httpx.post(base + "/chat/completions", json={"max_tokens": 1}, timeout=2)
                return True
            except httpx.HTTPError:
                return False

        try:
            upstream.wait_ready(answers, 20, interval=0.1)
            probe_dir = probe_env = None
            if args.gc_probe:
                probe_dir = tmp / f"gc-{port}"
                probe_dir.mkdir()
                probe_env = {"SEEKWATCH_GC_PROBE_DIR": str(probe_dir),
                             "PYTHONPATH": os.pathsep.join([str(GC_PROBE), os.environ.get("PYTHONPATH", "")])}
            node = start_node(tmp, "--engine", "upstream", "--upstream-url", base, "--served-model-name",
                              "deepseek-chat", "--max-batch", str(args.streams),
                              "--max-queue", str(args.requests + args.streams),
                              *(["--engine-process"] if args.engine_process else []), cpus=node_cpus,
                              env=probe_env)
            try:
                yield base + "/chat/completions", node, probe_dir
            finally:
                node.stop()
        finally:
            upstream.stop()

    def both(direct_url: str, node, probe_dir: Path | None, requests: int) -> dict:
        node_url = node.openai_base + "/chat/completions"
        return {"direct": asyncio.run(concurrent(direct_url, args.streams, requests, args.tokens, None)),
                "node": asyncio.run(concurrent(node_url, args.streams, requests, args.tokens, node.process.pid,
                                               probe_dir))}

    with upstream_and_node(0.0) as (direct_url, node, probe_dir):
        single_r = asyncio.run(single(direct_url, node.openai_base + "/chat/completions", args.single_requests,
                                      args.tokens))
        print(json.dumps({"single": single_r}), flush=True)
        conc = both(direct_url, node, probe_dir, args.requests)
        print(json.dumps({"concurrent": conc}), flush=True)
    paced = None
    if args.paced_step_ms:
        with upstream_and_node(args.paced_step_ms) as (direct_url, node, probe_dir):
            paced = {"step_ms": args.paced_step_ms, **both(direct_url, node, probe_dir, args.streams)}
        print(json.dumps({"paced": paced}), flush=True)
    date = dt.date.today().isoformat()
    result = {"date": date, "device": f"CPU ({os.cpu_count()} cores)", "machine": platform.machine(),
              "python": platform.python_version(), "tokens": args.tokens,
              "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
              "load_average": os.getloadavg(), "pinned": bool(node_cpus), "engine_process": args.engine_process,
              "single": single_r, "concurrent": conc,
              "paced": paced}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"relay-{date}.json"
    out.write_text(json.dumps(result, indent=2), "utf-8")
    table = markdown(result)
    print(table)
    if args.write_docs:
        from benchmarks.report import write_block

        write_block("serve_bench:relay", "Serving (relay)", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
