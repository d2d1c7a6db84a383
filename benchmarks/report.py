"""What the benchmarks share: one percentile rule, one reader of a streamed reply's timings,
and one writer of a benchmark's table into the docs (between its ``<!-- NAME -->`` and
``<!-- /NAME -->`` markers, so a re-run replaces its own figures and nothing else; a first
run appends the block under a heading of its own)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import AsyncIterator, Callable

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"


def write_block(name: str, heading: str, text: str, path: Path = BENCHMARKS_MD) -> None:
    """Put ``text`` between the markers named ``name`` in ``path`` (appended under
    ``## heading`` when the markers are not there yet)."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    doc = path.read_text("utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + f"\n\n## {heading}\n\n{block}\n"
    path.write_text(doc, "utf-8")


def cpu_split(no_pin: bool = False) -> tuple[set[int] | None, set[int] | None]:
    """(load generator's CPUs, node's CPUs): separate cores when there are two, so a
    benchmark measures the node, not its contention with the load generator."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, {cpus[1]}


def pct(values: list[float], q: float) -> float:
    """numpy's default (linear) percentile, ``q`` in 0..1; NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def read_stream(response, t0: float) -> tuple[float | None, int]:
    """:func:`read_events` of an httpx response, read with the one SSE reader of seekwatch."""
    from contracts.sse import aiter_data

    return await read_events(aiter_data(response), t0)


async def read_events(events: AsyncIterator[str], t0: float,
                      arrived: Callable[[], float] = time.perf_counter) -> tuple[float | None, int]:
    """(seconds from ``t0`` to the first content token or None, completion tokens from the
    usage chunk) of an OpenAI-style stream, given the ``data`` of its events.

    ``arrived`` says when the current event's bytes were read (default: now). A reader that
    decodes a whole network read before yielding its first event passes the time of the
    read, so that a reply arriving in one burst is not charged for decoding the events
    behind its first token."""
    ttft, tokens = None, 0
    async for data in events:
        chunk = json.loads(data)
        if ttft is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
            ttft = arrived() - t0
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    return ttft, tokens
