"""What every log source gives the pages: KPIs, time series, breakdowns, turn search.

Two implementations: :class:`dashboards.data.jsonl.JsonlSource` (local JSON-lines logs, the
embedded default; pandas over a pyarrow parse) and :class:`dashboards.data.logstore.LogStoreSource`
(Elasticsearch/OpenSearch, server-side aggregations only). Both return the same shapes, so the
pages never know which one they read, and the tests compare the two on the same data.

Definitions (contracts.signals, docs/quality.md):
- turn completion is over ``chat`` turns (a record without ``request_kind`` is one): a turn is
  *completed* when its status is ``completed`` and no feedback record with ``rating: down``
  names its ``request_id`` (feedback at any time counts); tokens and cost count every kind;
- dialogue completion is over conversations that *ended* in the range (``idle_s`` after their
  last chat turn): completed when that last turn is, with no thumbs-down before the end;
- percentiles are numpy's linear interpolation between samples; see docs/dashboard.md for
  the log store's bound;
- time buckets start at multiples of the interval since the Unix epoch (UTC).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import pandas as pd

#: Bucket edges (ms) for latency histograms: the Prometheus buckets of contracts.metrics, so
#: the dashboard's histogram and the alert rules read the same boundaries.
def histogram_edges_ms() -> list[float]:
    from contracts.metrics import LATENCY_BUCKETS

    return [0.0] + [b * 1000.0 for b in LATENCY_BUCKETS]


INTERVALS_S = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)


def pick_interval(seconds: float, max_buckets: int = 120) -> int:
    """The smallest standard interval that cuts ``seconds`` into at most ``max_buckets``."""
    for iv in INTERVALS_S:
        if seconds / iv <= max_buckets:
            return iv
    return INTERVALS_S[-1]


@dataclass(frozen=True)
class Window:
    start: dt.datetime  # inclusive, UTC
    end: dt.datetime    # exclusive, UTC

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def previous(self) -> "Window":
        return Window(self.start - (self.end - self.start), self.start)

    def today(self) -> "Window":
        """From 00:00 UTC of the end's day to the end."""
        midnight = self.end.astimezone(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        if midnight == self.end:
            midnight -= dt.timedelta(days=1)
        return Window(midnight, self.end)

    def shifted(self, seconds: float) -> "Window":
        d = dt.timedelta(seconds=seconds)
        return Window(self.start + d, self.end + d)


@dataclass
class Kpis:
    requests: int = 0           # every request kind (tokens and cost count them all)
    chat_turns: int = 0         # turn completion's denominator
    completed: int = 0          # completed chat turns
    sessions: int = 0           # distinct session ids with a turn in the range
    dialogues: int = 0          # conversations that ended in the range
    completed_dialogues: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    busy_s: float = 0.0
    rated_up: int = 0
    rated_down: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    ttft_p50: float | None = None
    ttft_p95: float | None = None
    ttft_p99: float | None = None
    e2e_p50: float | None = None
    e2e_p95: float | None = None
    e2e_p99: float | None = None
    seconds: float = 0.0

    @property
    def completion_rate(self) -> float | None:
        return self.completed / self.chat_turns if self.chat_turns else None

    @property
    def dialogue_completion_rate(self) -> float | None:
        return self.completed_dialogues / self.dialogues if self.dialogues else None

    @property
    def tokens_per_s(self) -> float | None:
        return self.output_tokens / self.seconds if self.seconds else None

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(completion_rate=self.completion_rate, dialogue_completion_rate=self.dialogue_completion_rate,
                 tokens_per_s=self.tokens_per_s)
        return d


SERIES_COLUMNS = ["time", "requests", "chat_turns", "completed", "dialogues", "completed_dialogues", "input_tokens", "output_tokens", "cost_usd", "busy_s",
                  "ttft_p50", "ttft_p95", "ttft_p99", "e2e_p50", "e2e_p95", "e2e_p99"]
QUALITY_COLUMNS = ["model_version", "turns", "completed", "refused", "failed", "rated_up", "rated_down",
                   "dialogues", "completed_dialogues"]
KIND_COLUMNS = ["request_kind", "requests", "input_tokens", "output_tokens", "cost_usd"]
TURN_COLUMNS = ["time", "session_id", "request_id", "turn_index", "model_version", "status",
                "latency_ms", "ttft_ms", "input_tokens", "output_tokens", "cost_usd"]


class LogSource(Protocol):
    name: str

    def describe(self) -> str: ...
    def kpis(self, w: Window, detail: bool = True) -> Kpis: ...
    def series(self, w: Window, interval_s: int) -> pd.DataFrame: ...
    def overview(self, w: Window, interval_s: int) -> tuple[Kpis, Kpis, Kpis, Kpis, pd.DataFrame]: ...
    def histogram(self, w: Window, field: str) -> pd.DataFrame: ...
    def slowest(self, w: Window, field: str, n: int = 20) -> pd.DataFrame: ...
    def quality_by_model(self, w: Window) -> pd.DataFrame: ...
    def completion_by_turn(self, w: Window) -> pd.DataFrame: ...
    def cost_by_kind(self, w: Window) -> pd.DataFrame: ...
    def search_turns(self, w: Window, *, session: str = "", text: str = "", models: list[str] | None = None,
                     statuses: list[str] | None = None, limit: int = 200) -> pd.DataFrame: ...
    def conversation(self, session_id: str) -> pd.DataFrame: ...
    def models(self, w: Window) -> list[str]: ...
    def health(self) -> dict[str, Any]: ...


def with_dialogues(series: pd.DataFrame, ends_ms, ok, interval_s: int) -> pd.DataFrame:
    """Add the conversations that ended in each bucket (``ends_ms``: their end times, ``ok``:
    completed?) to a series; a bucket with conversation ends but no turn gets a row of zeros."""
    import numpy as np

    step = int(interval_s) * 1000
    b = (np.asarray(ends_ms, dtype=np.int64) // step) * step
    conv = pd.DataFrame({"_b": b, "ok": np.asarray(ok, dtype=bool)}).groupby("_b")["ok"].agg(["size", "sum"])
    out = series.copy()
    out["_b"] = [int(t.timestamp() * 1000) for t in out["time"]]
    out = out.drop(columns=["dialogues", "completed_dialogues"], errors="ignore").set_index("_b")
    out = out.join(conv.rename(columns={"size": "dialogues", "sum": "completed_dialogues"}), how="outer")
    out["time"] = pd.to_datetime(out.index, unit="ms", utc=True)
    counts = ["requests", "chat_turns", "completed", "dialogues", "completed_dialogues", "input_tokens",
              "output_tokens", "cost_usd", "busy_s"]
    out[counts] = out[counts].fillna(0)
    for c in ("requests", "chat_turns", "completed", "dialogues", "completed_dialogues", "input_tokens", "output_tokens"):
        out[c] = out[c].astype("int64")
    return out.sort_index().reset_index(drop=True)[SERIES_COLUMNS]
