"""What a source hands the rules: one :class:`NodeObservation` per node per evaluation.

Both sources (direct scrape and PromQL) fill the same fields with the same meaning, and the
rules never look at where they came from — that is what makes their decisions equal on the
same data. A value is either a number, ``None`` (defined but empty: no requests in the
window, so there is nothing to judge and the condition is false) or :data:`UNKNOWN` (not
enough history yet, e.g. right after a restart: the alert keeps its state).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence


class _Unknown:
    _inst = None

    def __new__(cls):
        if cls._inst is None:
            cls._inst = super().__new__(cls)
        return cls._inst

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __bool__(self) -> bool:
        return False


UNKNOWN = _Unknown()


@dataclass
class Completion:
    """Turn completion's inputs over the window (definition: contracts.signals)."""

    total: float        # chat turns ended in the window, all statuses
    completed: float    # chat turns with status="completed"
    down: float         # completed chat turns that drew a thumbs-down in the window (once per turn)

    @property
    def samples(self) -> float:
        """What the rule's ``min_samples`` counts: chat turns."""
        return self.total

    @property
    def rate(self) -> float | None:
        if self.total <= 0:
            return None
        # max(): a thumbs-down in the window can rate a turn that ended before it
        return max(0.0, self.completed - self.down) / self.total


@dataclass
class Dialogues:
    """Dialogue completion's inputs: conversations that ended in the window, by outcome."""

    ended: float
    completed: float

    @property
    def samples(self) -> float:
        """What the rule's ``min_samples`` counts: ended conversations."""
        return self.ended

    @property
    def rate(self) -> float | None:
        return self.completed / self.ended if self.ended > 0 else None


@dataclass
class NodeObservation:
    node: str                                   # host:port (Prometheus' instance)
    up: bool = True
    error: str | None = None                    # why there is no data, for the no-data alert
    latency: object = UNKNOWN                   # seconds (quantile over the window) | None | UNKNOWN
    latency_e2e: object = UNKNOWN               # the same for p99_e2e_latency (end-to-end duration)
    completion: object = UNKNOWN                # Completion | UNKNOWN (turn completion)
    dialogues: object = UNKNOWN                 # Dialogues | UNKNOWN (dialogue completion)
    gpu: dict[str, object] = field(default_factory=dict)   # gpu index -> average ratio | UNKNOWN
    running: object = UNKNOWN                   # average requests_running over the window | UNKNOWN
    #: inputs computed over less history than their window (e.g. just after alertd restarted):
    #: they may confirm an alert but never clear one — "all good" needs the whole window.
    partial: set[str] = field(default_factory=set)


def increase(values: Sequence[float]) -> float:
    """Counter increase across ``values`` (oldest first), counting a drop as a reset."""
    total = 0.0
    prev = values[0]
    for v in values[1:]:
        total += v - prev if v >= prev else v
        prev = v
    return total


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile`` over ``(upper_bound, cumulative_count)`` pairs.

    Linear interpolation inside the bucket holding the rank; the +Inf bucket answers with the
    highest finite bound; NaN when there are no observations or no +Inf bucket.
    """
    bs = sorted(buckets)
    if len(bs) < 2 or not math.isinf(bs[-1][0]):
        return math.nan
    # Counts must be monotonic; Prometheus fixes small violations from float rounding.
    fixed, hi = [], 0.0
    for ub, c in bs:
        hi = max(hi, c)
        fixed.append((ub, hi))
    bs = fixed
    observations = bs[-1][1]
    if observations <= 0:
        return math.nan
    rank = q * observations
    b = next(i for i, (_, c) in enumerate(bs) if c >= rank)
    if b == len(bs) - 1:
        return bs[-2][0]
    if b == 0 and bs[0][0] <= 0:
        return bs[0][0]
    start = 0.0 if b == 0 else bs[b - 1][0]
    end = bs[b][0]
    prev_count = 0.0 if b == 0 else bs[b - 1][1]
    count = bs[b][1] - prev_count
    if count <= 0:
        return end
    return start + (end - start) * ((rank - prev_count) / count)
