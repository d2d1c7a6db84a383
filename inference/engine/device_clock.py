"""Device time of the engine's steps, measured on the device itself.

The engine's own accounting (``StepStats``) is host time: on a GPU the host launches a step
and moves on, so host time says how long the host took, not how long the device worked, and
not whether the device sat idle between steps. A pair of CUDA events around each step's work
on the stream gives the device's own time for it; the sum over an interval against the
interval's wall time says how busy the device was while the engine had work, which is the
first thing to know before making a step faster (a step the device waits for cannot be
sped up by faster kernels).

Nothing here waits for the device: spans are collected once their end event has passed
(``query``), in stream order, and events are reused from a small pool. On the CPU the clock
is off and costs nothing.
"""
from __future__ import annotations

from collections import defaultdict

import torch


class DeviceClock:
    """Spans of device work on the current stream, by kind (``"decode"``, ``"prefill"``)."""

    def __init__(self, device: torch.device):
        self.enabled = device.type == "cuda"
        self._free: list[torch.cuda.Event] = []
        self._pending: list[tuple[torch.cuda.Event, torch.cuda.Event, str]] = []

    def _event(self) -> "torch.cuda.Event":
        event = self._free.pop() if self._free else torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> "torch.cuda.Event | None":
        """Mark the start of a span of work about to be queued on the stream."""
        return self._event() if self.enabled else None

    def stop(self, start: "torch.cuda.Event | None", kind: str) -> None:
        """Mark the end of the span begun with ``start`` (everything queued since)."""
        if start is not None:
            self._pending.append((start, self._event(), kind))

    def collect(self) -> dict[str, tuple[int, float]]:
        """``{kind: (spans, seconds)}`` of the spans the device has finished since the last
        call; spans still running stay for a later one."""
        done: dict[str, list] = defaultdict(lambda: [0, 0.0])
        finished = 0
        for start, end, kind in self._pending:
            if not end.query():
                break  # one stream: the later spans have not finished either
            entry = done[kind]
            entry[0] += 1
            entry[1] += start.elapsed_time(end) / 1e3
            self._free += (start, end)
            finished += 1
        del self._pending[:finished]
        return {kind: (n, s) for kind, (n, s) in done.items()}
