"""Pieces of the node's own path from a request to its first token, each timed beside what
it replaced, in one process, alternating. No network and no node: end to end these are
within the relay benchmark's noise (``relay_bench.py``); this isolates them.

* **The streamed reply's ASGI response**: Starlette's ``StreamingResponse`` (what the chat
  route used, and what a FastAPI app would use) beside
  :class:`inference.event_stream.EventStreamResponse`. Each response streams two SSE events
  to an ASGI ``send`` that does nothing, under ASGI spec 2.3 (what uvicorn reports, so
  Starlette takes its disconnect-listening path); ``receive`` never returns, as for a
  client that stays. Timed: from calling the response to its first body write (on the path
  to a client's first token), and the whole response (CPU per streamed request).
* **The upstream request's JSON** (``--engine upstream``): ``json.dumps`` beside the relay's
  encoder (orjson), for NextChat-shaped conversations of 1, 10 and 50 turns of Chinese text:
  the whole history goes upstream on every turn, before the upstream can start.

    python benchmarks/request_path_bench.py --write-docs
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def measure(cls, responses: int) -> tuple[float, float]:
    """(median µs to the first body write, median µs for the whole response)."""
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}}
    stay = asyncio.Event()

    async def receive():
        await stay.wait()

    first: list[float] = []

    async def send(message):
        if message["type"] == "http.response.body" and not first:
            first.append(time.perf_counter())

    async def events():
        yield 'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
        yield 'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'

    to_first, whole = [], []
    for _ in range(responses):
        first.clear()
        response = cls(events(), media_type="text/event-stream")
        t0 = time.perf_counter()
        await response({**scope}, receive, send)
        t1 = time.perf_counter()
        to_first.append(first[0] - t0)
        whole.append(t1 - t0)
    return statistics.median(to_first) * 1e6, statistics.median(whole) * 1e6


ORJSON = "the relay's encoder (orjson)"


def conversation(turns: int) -> dict:
    """An upstream request body of ``turns`` messages after a system prompt, NextChat-sized."""
    messages = [{"role": "system", "content": "你是一个乐于助人的客服助手，请用中文简洁回答。" * 4}]
    messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": "我的订单 12345 怎么申请退货？" * 12}
                 for i in range(turns)]
    return {"model": "deepseek-chat", "messages": messages, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": 0.5, "top_p": 1.0, "max_tokens": 1024}


def time_encoders(turns: int, calls: int) -> dict[str, float]:
    """Median µs per call of ``json.dumps`` (as the relay wrote before) and of its encoder."""
    from inference.engine.upstream import _encode

    body = conversation(turns)
    out = {}
    for name, encode in (("json.dumps", lambda b: json.dumps(b).encode()), (ORJSON, _encode)):
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            encode(body)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times) * 1e6
    out["bytes"] = len(_encode(body))
    return out


def markdown(r: dict) -> str:
    rows = [f"Measured {r['date']} on {r['device']} ({r['machine']}), Python {r['python']}, Starlette "
            f"{r['starlette']}; {r['rounds']} alternating rounds of {r['responses']} responses per class "
            f"(medians per round, then the median of the rounds).",
            f"Command: `{r['command']}`", "",
            "| response class | to the first body write | whole response (two events) |", "|---|---|---|"]
    for name, v in r["classes"].items():
        rows.append(f"| {name} | {v['to_first_us']:.1f} µs | {v['whole_us']:.1f} µs |")
    rows += ["", "| upstream request body | bytes (orjson) | `json.dumps` | the relay's encoder (orjson) |",
             "|---|---|---|---|"]
    for turns, v in r["encoding"].items():
        ours = v[ORJSON]
        rows.append(f"| system prompt and {turns} turn{'s' if turns != 1 else ''} | {v['bytes']:,} | {v['json.dumps']:.1f} µs | {ours:.1f} µs |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--responses", type=int, default=3000, help="responses per class and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--encodings", type=int, default=2000, help="encodings per body size")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--out", help="JSON results (default: none)")
    args = ap.parse_args()

    import starlette
    from starlette.responses import StreamingResponse

    from inference.event_stream import EventStreamResponse

    classes = {"Starlette `StreamingResponse`": StreamingResponse, "`EventStreamResponse`": EventStreamResponse}
    per_round: dict[str, list[tuple[float, float]]] = {name: [] for name in classes}
    for _ in range(args.rounds):
        for name, cls in classes.items():
            per_round[name].append(asyncio.run(measure(cls, args.responses)))
    result = {"date": dt.date.today().isoformat(), "device": f"CPU ({os.cpu_count()} cores)",
              "machine": platform.machine(), "python": platform.python_version(),
              "starlette": starlette.__version__, "rounds": args.rounds, "responses": args.responses,
              "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
              "classes": {name: {"to_first_us": statistics.median(a for a, _ in rounds),
                                 "whole_us": statistics.median(b for _, b in rounds),
                                 "rounds": rounds} for name, rounds in per_round.items()},
              "encoding": {turns: time_encoders(turns, args.encodings) for turns in (1, 10, 50)}}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2), "utf-8")
    table = markdown(result)
    print(table)
    if args.write_docs:
        from benchmarks.report import write_block

        write_block("request_path_bench", "The node's request path", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
