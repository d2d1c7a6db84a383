"""KPIs and breakdowns over in-memory frames of turns and feedback (the JSON-lines source).

``turns``: one row per session record, sorted by ``time`` (datetime64[ms, UTC]), columns
``session_id, request_id, model_version, status, request_kind, turn_index, latency_ms, ttft_ms,
input_tokens, output_tokens, cost_usd`` and the derived per-turn flags (see
``JsonlSource._derive``): ``_chat``, ``_done``, ``_up``, ``_down``, ``_down_at`` (epoch ms of
the first thumbs-down, int64 max when none) and ``_sess`` (session code).
``feedback``: ``time, request_id, session_id, rating``.

Turn and dialogue completion follow ``contracts.signals`` (the tests recount both from the
raw records with it).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from contracts.signals import CHAT, DEFAULT_CONVERSATION_IDLE_S

from .base import (KIND_COLUMNS, QUALITY_COLUMNS, SERIES_COLUMNS, TURN_COLUMNS, Kpis, Window, histogram_edges_ms,
                   with_dialogues)

FAILED = ("error", "aborted", "truncated", "rejected")


def _ts(t) -> pd.Timestamp:
    ts = pd.Timestamp(t)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _ms(col: pd.Series) -> np.ndarray:
    """Epoch milliseconds of a tz-aware datetime column, as int64."""
    return np.asarray(col.dt.as_unit("ms").array.asi8)


class FrameAnalytics:
    """Everything :class:`~dashboards.data.base.LogSource` needs, computed with pandas."""

    name = "frame"
    #: a conversation has ended this long after its last chat turn (the nodes' --conversation-idle)
    conversation_idle_s: float = DEFAULT_CONVERSATION_IDLE_S

    # subclasses provide these two
    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:  # pragma: no cover - interface
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def _window(self, w: Window) -> pd.DataFrame:
        turns, _ = self.frames()
        if turns.empty:
            return turns
        t = _ms(turns["time"])
        lo = np.searchsorted(t, _ts(w.start).value // 1_000_000, "left")
        hi = np.searchsorted(t, _ts(w.end).value // 1_000_000, "left")
        return turns.iloc[lo:hi]

    @staticmethod
    def _flags(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(done, rated_up, rated_down, session codes) for the rows of ``df``."""
        return (df["_done"].to_numpy(), df["_up"].to_numpy(), df["_down"].to_numpy(), df["_sess"].to_numpy())

    def _rated(self, rating: str) -> pd.Index:
        _, fb = self.frames()
        if fb.empty:
            return pd.Index([], dtype=object)
        ids = fb.loc[fb["rating"] == rating, "request_id"].dropna()
        return pd.Index(ids.unique())

    def _ended_conversations(self, w: Window, with_ends: bool = False):
        """(model_version of the last turn, completed?[, end ms]) per conversation that ended in ``w``.

        A conversation's end depends only on its last chat turn (``idle_s`` later, with no chat
        turn of its session in between), so the chat turns of ``[start - idle, end)`` decide it.
        """
        turns, _ = self.frames()
        if turns.empty:
            empty = (np.array([], dtype=object), np.array([], dtype=bool))
            return (*empty, np.array([], dtype=np.int64)) if with_ends else empty
        idle = int(round(self.conversation_idle_s * 1000))
        start, end = _ts(w.start).value // 1_000_000, _ts(w.end).value // 1_000_000
        t = _ms(turns["time"])
        part = turns.iloc[np.searchsorted(t, start - idle, "left"):np.searchsorted(t, end, "left")]
        part = part[part["_chat"].to_numpy()]
        ms, sess = _ms(part["time"]), part["_sess"].to_numpy()
        order = np.lexsort((ms, sess))
        ms, sess = ms[order], sess[order]
        same_next = np.r_[sess[1:] == sess[:-1], False]
        gap = np.r_[ms[1:] - ms[:-1], 0]
        ends = ms + idle
        ended = (~same_next | (gap >= idle)) & (ends >= start) & (ends < end)
        ok = (part["status"].to_numpy()[order] == "completed") & ~(part["_down_at"].to_numpy()[order] < ends)
        out = (part["model_version"].astype(str).to_numpy()[order][ended], ok[ended])
        return (*out, ends[ended]) if with_ends else out

    # ------------------------------------------------------------------ KPIs
    def kpis(self, w: Window, detail: bool = True) -> Kpis:
        df = self._window(w)
        k = Kpis(seconds=w.seconds)
        if df.empty:
            return k
        done, up, down, codes = self._flags(df)
        k.requests = int(len(df))
        k.chat_turns = int(df["_chat"].sum())
        k.completed = int(done.sum())
        k.sessions = int(len(np.unique(codes)))
        _, conv_ok = self._ended_conversations(w)
        k.dialogues, k.completed_dialogues = int(len(conv_ok)), int(conv_ok.sum())
        k.input_tokens = int(df["input_tokens"].sum())
        k.output_tokens = int(df["output_tokens"].sum())
        k.cost_usd = float(df["cost_usd"].sum())
        k.busy_s = float(df["latency_ms"].sum()) / 1000.0
        k.rated_up = int(up.sum())
        k.rated_down = int(down.sum())
        k.statuses = {str(s): int(n) for s, n in df["status"].value_counts().items() if n}
        ttft = df["ttft_ms"].dropna().to_numpy(dtype="float64")
        e2e = df["latency_ms"].dropna().to_numpy(dtype="float64")
        if len(ttft):
            k.ttft_p50, k.ttft_p95, k.ttft_p99 = (float(x) for x in np.percentile(ttft, [50, 95, 99]))
        if len(e2e):
            k.e2e_p50, k.e2e_p95, k.e2e_p99 = (float(x) for x in np.percentile(e2e, [50, 95, 99]))
        return k

    def overview(self, w: Window, interval_s: int):
        """(this period, previous period, today, yesterday to the same time, series of this
        period) for the Overview."""
        return (self.kpis(w, detail=False), self.kpis(w.previous(), detail=False), self.kpis(w.today(), detail=False),
                self.kpis(w.today().shifted(-86400), detail=False), self.series(w, interval_s))

    def series(self, w: Window, interval_s: int) -> pd.DataFrame:
        df = self._window(w)
        if df.empty:
            return pd.DataFrame(columns=SERIES_COLUMNS)
        ms = _ms(df["time"])
        step = int(interval_s) * 1000
        bucket = (ms // step) * step
        done = self._flags(df)[0]
        g = df[["input_tokens", "output_tokens", "cost_usd", "latency_ms", "ttft_ms", "_chat"]].assign(
            _b=bucket, _done=done).groupby("_b", sort=True)
        out = pd.DataFrame({
            "requests": g.size(),
            "chat_turns": g["_chat"].sum(),
            "completed": g["_done"].sum(),
            "input_tokens": g["input_tokens"].sum(),
            "output_tokens": g["output_tokens"].sum(),
            "cost_usd": g["cost_usd"].sum(),
            "busy_s": g["latency_ms"].sum() / 1000.0,
        })
        for col, name in (("ttft_ms", "ttft"), ("latency_ms", "e2e")):
            q = g[col].quantile([0.5, 0.95, 0.99]).unstack()
            for qq, suffix in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
                out[f"{name}_{suffix}"] = q[qq] if qq in q else np.nan
        out = out.reset_index(names="_b")
        out.insert(0, "time", pd.to_datetime(out.pop("_b"), unit="ms", utc=True))
        out["dialogues"] = 0
        out["completed_dialogues"] = 0
        _, ok, ends = self._ended_conversations(w, with_ends=True)
        return with_dialogues(out[SERIES_COLUMNS], ends, ok, interval_s)

    def histogram(self, w: Window, field: str) -> pd.DataFrame:
        edges = histogram_edges_ms()
        vals = self._window(w)[field].dropna().to_numpy(dtype="float64")
        bounds = edges + [np.inf]
        counts, _ = np.histogram(vals, bins=bounds)
        return pd.DataFrame({"lo_ms": bounds[:-1], "hi_ms": bounds[1:], "count": counts.astype(int)})

    def slowest(self, w: Window, field: str, n: int = 20) -> pd.DataFrame:
        df = self._window(w)
        if df.empty:
            return pd.DataFrame(columns=TURN_COLUMNS)
        return df.nlargest(n, field)[TURN_COLUMNS].reset_index(drop=True)

    def quality_by_model(self, w: Window) -> pd.DataFrame:
        df = self._window(w)
        if df.empty:
            return pd.DataFrame(columns=QUALITY_COLUMNS)
        df = df[df["_chat"].to_numpy()]
        if df.empty:
            return pd.DataFrame(columns=QUALITY_COLUMNS)
        done, up, down, _ = self._flags(df)
        d = pd.DataFrame({"model_version": df["model_version"].astype(str).to_numpy(), "_done": done,
                          "_ref": (df["status"] == "refused").to_numpy(), "_fail": df["status"].isin(FAILED).to_numpy(),
                          "_up": up, "_down": down})
        g = d.groupby("model_version", sort=True)
        out = pd.DataFrame({
            "turns": g.size(), "completed": g["_done"].sum(), "refused": g["_ref"].sum(),
            "failed": g["_fail"].sum(), "rated_up": g["_up"].sum(), "rated_down": g["_down"].sum(),
        })
        models, conv_ok = self._ended_conversations(w)
        out["dialogues"] = [int((models == m).sum()) for m in out.index]
        out["completed_dialogues"] = [int(conv_ok[models == m].sum()) for m in out.index]
        out = out.reset_index()
        return out[QUALITY_COLUMNS].astype({c: int for c in QUALITY_COLUMNS[1:]})

    def completion_by_turn(self, w: Window, cap: int = 10) -> pd.DataFrame:
        df = self._window(w)
        if not df.empty:
            df = df[df["_chat"].to_numpy()]
        if df.empty:
            return pd.DataFrame(columns=["turn_index", "turns", "completed"])
        d = pd.DataFrame({"_done": self._flags(df)[0], "_ti": df["turn_index"].clip(upper=cap).to_numpy()})
        g = d.groupby("_ti", sort=True)
        out = pd.DataFrame({"turns": g.size(), "completed": g["_done"].sum()}).reset_index(names="turn_index")
        return out.astype(int)

    def cost_by_kind(self, w: Window) -> pd.DataFrame:
        """Requests, tokens and Σ cost_usd per ``request_kind`` (none = chat), costliest first."""
        df = self._window(w)
        if df.empty:
            return pd.DataFrame(columns=KIND_COLUMNS)
        kind = df["request_kind"].fillna(CHAT).astype(str)
        g = df[["input_tokens", "output_tokens", "cost_usd"]].assign(request_kind=kind.to_numpy()).groupby("request_kind")
        out = pd.DataFrame({"requests": g.size(), "input_tokens": g["input_tokens"].sum(),
                            "output_tokens": g["output_tokens"].sum(), "cost_usd": g["cost_usd"].sum()}).reset_index()
        out = out.astype({"requests": int, "input_tokens": int, "output_tokens": int})
        return out.sort_values(["cost_usd", "request_kind"], ascending=[False, True], ignore_index=True)[KIND_COLUMNS]

    def models(self, w: Window) -> list[str]:
        df = self._window(w)
        return sorted(map(str, df["model_version"].dropna().unique())) if not df.empty else []

    def _filter(self, w: Window, session: str, models, statuses) -> pd.DataFrame:
        df = self._window(w)
        if session:
            df = df[df["session_id"].astype(str).str.contains(session, regex=False) |
                    df["request_id"].astype(str).str.contains(session, regex=False)]
        if models:
            df = df[df["model_version"].isin(models)]
        if statuses:
            df = df[df["status"].isin(statuses)]
        return df
