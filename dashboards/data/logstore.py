"""Elasticsearch / OpenSearch source: every number comes from a server-side aggregation
(percentiles, date_histogram, terms, range, cardinality, filter). The dashboard never pulls
all documents: the only documents fetched are the ones a page lists (the N slowest turns, a
search page of at most ``limit`` turns, one conversation).

Through the one log-store client (``contracts.logstore``), against the index pattern ``seekwatch-*`` (session records in
``seekwatch-sessions``, feedback in ``seekwatch-feedback``; fields as in the index template:
keywords for ids, status and model_version).

The feedback join: the ``request_id`` of every thumbs-down (and thumbs-up) feedback record
since the range's start is collected with a paged ``composite`` aggregation (feedback is a
small fraction of the turns), then used in ``terms`` filters. Session counts use
``cardinality`` (HyperLogLog++, precision_threshold 40000: exact in practice below ~40k
sessions per range, within about 1 % above).

Two numbers need more than an aggregation can say, and read a bounded set of values instead:

* dialogue completion (``contracts.signals``): whether a chat turn was its conversation's last
  depends on the next turn of its session, so the (session, time, status, request id, model)
  keys of the chat turns in ``[start - idle, end)`` are read with a paged ``composite``
  aggregation and the conversations are cut in Python — exact, one page per 10,000 turns;
* percentiles: the stores' HDR and t-digest percentiles do not interpolate between samples
  the way numpy does (HDR returns the next sample up: +16 % on a P99 of a few hundred
  samples). A window (or series) with at most ``EXACT_MAX`` latencies has them read back and
  is computed exactly (numpy's linear interpolation); above that the HDR histogram (3
  significant digits) answers, whose value lies between the two samples numpy interpolates
  between at that rank (±0.1 %): with more than 10,000 samples, within 5 % of numpy's value
  unless the distribution has a gap wider than that at the rank.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd

from contracts.log_schema import FEEDBACK_DATASET, SESSION_DATASET
from contracts.logstore import StoreClient, StoreError, StoreUnavailable
from contracts.signals import CHAT, DEFAULT_CONVERSATION_IDLE_S

from .base import KIND_COLUMNS, QUALITY_COLUMNS, SERIES_COLUMNS, TURN_COLUMNS, Kpis, Window, histogram_edges_ms, with_dialogues

FAILED = ["error", "aborted", "truncated", "rejected"]
PCTS = [50.0, 95.0, 99.0]
#: HDR histogram percentiles: 3 significant digits (within 0.1 % of the sample value), and much
#: cheaper than t-digest at high compression on millions of latencies.
PCT_METHOD = {"hdr": {"number_of_significant_value_digits": 3}}
TERMS_CHUNK = 60000  # below the stores' default index.max_terms_count (65536)
#: buckets per page of a ``composite`` aggregation (the stores' default search.max_buckets is larger)
COMPOSITE_PAGE = 10000
#: one composite source: the request id (feedback names the turn it rates by it)
RID_SOURCE = [{"rid": {"terms": {"field": "request_id"}}}]
#: At most this many latency samples in a window: exact percentiles from the values themselves
#: (the stores' default index.max_result_window is 10,000).
EXACT_MAX = 10000
#: chat turns (records without ``request_kind`` predate kinds and were chat turns)
CHAT_FILTER = {"bool": {"should": [{"term": {"request_kind": CHAT}},
                                   {"bool": {"must_not": [{"exists": {"field": "request_kind"}}]}}],
                        "minimum_should_match": 1}}
_FIELD = {"input_tokens": "gen_ai.usage.input_tokens", "output_tokens": "gen_ai.usage.output_tokens"}


class DashboardSourceError(RuntimeError):
    """The dashboard's log-store source could not answer (the store is unreachable or refused
    the query); the message names the store's URL and, for an HTTP error, its status."""


def _ms(t) -> int:
    return int(pd.Timestamp(t).timestamp() * 1000)


class LogStoreSource:
    """The dashboard's view of the log store. It talks to the store through the one store
    client (:class:`contracts.logstore.StoreClient`), so it takes the same TLS (CA bundle,
    ``verify``) and auth options (basic, API key, ``$SEEKWATCH_ES_*``) as ``es-setup``."""

    name = "logstore"

    def __init__(self, store: "StoreClient | str", index: str = "seekwatch-*", where: Mapping[str, str] | None = None,
                 timeout: float = 30.0, feedback_ttl_s: float = 5.0,
                 conversation_idle_s: float = DEFAULT_CONVERSATION_IDLE_S):
        self.conversation_idle_s = conversation_idle_s
        self.client = store if isinstance(store, StoreClient) else StoreClient(store, timeout=timeout)
        self.url = self.client.url
        self.index = index
        self.where = dict(where or {})
        self.feedback_ttl_s = feedback_ttl_s
        self._fb_cache: dict[tuple, tuple[float, set[str]]] = {}
        self._lock = threading.Lock()
        self.requests_made = 0

    def describe(self) -> str:
        return f"log store: {self.url}/{self.index}"

    # ------------------------------------------------------------------ HTTP
    def _search(self, body: dict, index: str | None = None) -> dict:
        self.requests_made += 1
        try:
            return self.client.search(index or self.index, body, ignore_unavailable="true", allow_no_indices="true")
        except StoreError as exc:
            raise DashboardSourceError(f"{self.url}: HTTP {exc.status}: {str(exc)[:300]}") from None
        except StoreUnavailable as exc:
            raise DashboardSourceError(f"{self.url}: {exc}") from None

    # ------------------------------------------------------------------ queries
    def _tags(self) -> list[dict]:
        return [{"term": {k: v}} for k, v in self.where.items()]

    def _turns_query(self, w: Window, *extra: dict) -> dict:
        return {"bool": {"filter": [{"term": {"event.dataset": SESSION_DATASET}},
                                    {"range": {"@timestamp": {"gte": _ms(w.start), "lt": _ms(w.end), "format": "epoch_millis"}}},
                                    *self._tags(), *extra]}}

    def _composite(self, query: dict, sources: list[dict], aggs: dict | None = None) -> Iterator[dict]:
        """Every bucket of a ``composite`` aggregation over ``query``, page after page
        (``after_key``): the one way this source reads more keys than one response holds."""
        after = None
        while True:
            comp: dict[str, Any] = {"size": COMPOSITE_PAGE, "sources": sources}
            if after:
                comp["after"] = after
            body = {"size": 0, "query": query, "aggs": {"c": {"composite": comp, **({"aggs": aggs} if aggs else {})}}}
            agg = self._search(body)["aggregations"]["c"]
            yield from agg["buckets"]
            after = agg.get("after_key")
            if len(agg["buckets"]) < COMPOSITE_PAGE or not after:
                return

    def _feedback_query(self, rating: str, since_ms: int) -> dict:
        return {"bool": {"filter": [{"term": {"event.dataset": FEEDBACK_DATASET}}, {"term": {"rating": rating}},
                                    {"range": {"@timestamp": {"gte": since_ms, "format": "epoch_millis"}}},
                                    *self._tags()]}}

    def _rated(self, rating: str, since) -> set[str]:
        key = (rating, _ms(since))
        now = time.monotonic()
        with self._lock:
            # ids collected since an earlier time are a superset that gives the same answer:
            # a turn in the range can only be rated after the range's start
            for (r, s), (at, ids) in self._fb_cache.items():
                if r == rating and s <= key[1] and now - at < self.feedback_ttl_s:
                    return ids
        ids = {b["key"]["rid"] for b in self._composite(self._feedback_query(rating, _ms(since)), RID_SOURCE)}
        with self._lock:
            self._fb_cache[key] = (now, ids)
        return ids

    @staticmethod
    def _terms(field: str, values: set[str]) -> list[dict]:
        vals = sorted(values)
        return [{"terms": {field: vals[i:i + TERMS_CHUNK]}} for i in range(0, len(vals), TERMS_CHUNK)] or \
            [{"terms": {field: []}}]

    def _done_filter(self, down: set[str]) -> dict:
        return {"bool": {"filter": [{"term": {"status": "completed"}}, CHAT_FILTER],
                         "must_not": self._terms("request_id", down) if down else []}}

    def _metric_aggs(self, down: set[str], up: set[str] | None = None, percentiles: bool = True,
                     dialogues: bool = False) -> dict:
        aggs: dict[str, Any] = {
            "in": {"sum": {"field": _FIELD["input_tokens"]}},
            "out": {"sum": {"field": _FIELD["output_tokens"]}},
            "cost": {"sum": {"field": "cost_usd"}},
            "busy": {"sum": {"field": "latency_ms"}},
            "done": {"filter": self._done_filter(down)},
            "chat": {"filter": CHAT_FILTER},
        }
        if percentiles:
            aggs["ttft"] = {"percentiles": {"field": "ttft_ms", "percents": PCTS, **PCT_METHOD}}
            aggs["e2e"] = {"percentiles": {"field": "latency_ms", "percents": PCTS, **PCT_METHOD}}
        if dialogues:
            aggs["sessions"] = {"cardinality": {"field": "session_id", "precision_threshold": 40000}}
        if up is not None:
            aggs["up"] = {"filter": {"bool": {"should": self._terms("request_id", up), "minimum_should_match": 1}}}
            aggs["down"] = {"filter": {"bool": {"should": self._terms("request_id", down), "minimum_should_match": 1}}}
            aggs["statuses"] = {"terms": {"field": "status", "size": 20}}
            aggs["refused"] = {"filter": {"term": {"status": "refused"}}}
            aggs["failed"] = {"filter": {"terms": {"status": FAILED}}}
        return aggs

    @staticmethod
    def _pct(agg: Mapping | None, p: float) -> float | None:
        if not agg:
            return None
        vals = agg.get("values", {})
        v = vals.get(str(p), vals.get(f"{p:g}", vals.get(f"{p:.1f}")))
        return None if v is None or v == "NaN" else float(v)

    # ------------------------------------------------------------------ LogSource
    def kpis(self, w: Window, detail: bool = True) -> Kpis:
        """``detail=False`` skips the thumbs-up/down counts and the status breakdown (the
        Overview shows neither): no thumbs-up id look-up, fewer terms filters."""
        down = self._rated("down", w.start)
        up = self._rated("up", w.start) if detail else None
        r = self._search({"size": 0, "track_total_hits": True, "query": self._turns_query(w),
                          "aggs": self._metric_aggs(down, up, dialogues=True)})
        k = self._kpis_from(r["aggregations"], int(r["hits"]["total"]["value"]), w, up, down, detail)
        self._finish(k, w)
        return k

    def _finish(self, k: Kpis, w: Window, series: pd.DataFrame | None = None, interval_s: int = 0):
        """The numbers one aggregation cannot give: ended conversations, exact percentiles.
        Returns the ended conversations' (completed?, end ms) for a series."""
        _, ok, ends = self._ended_conversations(w, with_ends=True)
        k.dialogues, k.completed_dialogues = int(len(ok)), int(ok.sum())
        if 0 < k.requests <= EXACT_MAX:
            vals = self._latencies(w)
            for name, col in (("ttft", "ttft_ms"), ("e2e", "latency_ms")):
                v = vals[col].dropna().to_numpy(dtype="float64")
                if len(v):
                    for q, x in zip(("p50", "p95", "p99"), np.percentile(v, [50, 95, 99])):
                        setattr(k, f"{name}_{q}", float(x))
            if series is not None and not series.empty:
                _exact_series(series, vals, interval_s)
        return ok, ends

    def _latencies(self, w: Window) -> pd.DataFrame:
        """(time ms, ttft_ms, latency_ms) of every turn in ``w`` (at most EXACT_MAX)."""
        r = self._search({"size": EXACT_MAX, "query": self._turns_query(w), "_source": False,
                          "docvalue_fields": [{"field": "@timestamp", "format": "epoch_millis"}, "ttft_ms", "latency_ms"],
                          "sort": ["_doc"]})
        rows = []
        for h in r["hits"]["hits"]:
            f = h.get("fields", {})
            rows.append({"t": int(float(f["@timestamp"][0])), "ttft_ms": (f.get("ttft_ms") or [None])[0],
                         "latency_ms": (f.get("latency_ms") or [None])[0]})
        return pd.DataFrame(rows, columns=["t", "ttft_ms", "latency_ms"]).astype(
            {"ttft_ms": "float64", "latency_ms": "float64"})

    def _down_at(self, since_ms: int) -> dict[str, int]:
        """request_id -> epoch ms of its first thumbs-down, for thumbs-downs since ``since_ms``."""
        return {b["key"]["rid"]: int(b["first"]["value"])
                for b in self._composite(self._feedback_query("down", since_ms), RID_SOURCE,
                                         {"first": {"min": {"field": "@timestamp"}}})}

    def _ended_conversations(self, w: Window, with_ends: bool = False):
        """(model_version of the last turn, completed?) per conversation that ended in ``w``
        (contracts.signals; the same cut as the JSON-lines source)."""
        idle = int(round(self.conversation_idle_s * 1000))
        start, end = _ms(w.start), _ms(w.end)
        q = self._turns_query(Window(pd.Timestamp(start - idle, unit="ms", tz="UTC").to_pydatetime(), w.end), CHAT_FILTER)
        sources = [{"s": {"terms": {"field": "session_id"}}}, {"t": {"terms": {"field": "@timestamp"}}},
                   {"r": {"terms": {"field": "request_id"}}}, {"st": {"terms": {"field": "status"}}},
                   {"m": {"terms": {"field": "model_version"}}}]
        rows: list[tuple] = [(b["key"]["s"], int(b["key"]["t"]), b["key"]["r"], b["key"]["st"], b["key"]["m"])
                             for b in self._composite(q, sources)]
        if not rows:
            empty = (np.array([], dtype=object), np.array([], dtype=bool))
            return (*empty, np.array([], dtype=np.int64)) if with_ends else empty
        rows.sort(key=lambda x: (x[0], x[1]))
        down_at = self._down_at(start - idle)
        models, ok, end_ms = [], [], []
        for i, (sid, t, rid, status, model) in enumerate(rows):
            nxt = rows[i + 1] if i + 1 < len(rows) else None
            if nxt is not None and nxt[0] == sid and nxt[1] - t < idle:
                continue
            ends = t + idle
            if start <= ends < end:
                models.append(model)
                end_ms.append(ends)
                ok.append(status == "completed" and not down_at.get(rid, ends) < ends)
        out = (np.array(models, dtype=object), np.array(ok, dtype=bool))
        return (*out, np.array(end_ms, dtype=np.int64)) if with_ends else out

    def _kpis_from(self, a: Mapping, count: int, w: Window, up, down, detail: bool) -> Kpis:
        k = Kpis(seconds=w.seconds)
        k.requests = count
        if not k.requests:
            return k
        k.completed = int(a["done"]["doc_count"])
        k.chat_turns = int(a["chat"]["doc_count"])
        k.sessions = int(a["sessions"]["value"])
        k.input_tokens, k.output_tokens = int(a["in"]["value"]), int(a["out"]["value"])
        k.cost_usd, k.busy_s = float(a["cost"]["value"]), float(a["busy"]["value"]) / 1000.0
        if detail:
            k.rated_up = int(a["up"]["doc_count"]) if up else 0
            k.rated_down = int(a["down"]["doc_count"]) if down else 0
            k.statuses = {b["key"]: int(b["doc_count"]) for b in a["statuses"]["buckets"]}
        for name in ("ttft", "e2e"):
            for p, q in zip(PCTS, ("p50", "p95", "p99")):
                setattr(k, f"{name}_{q}", self._pct(a[name], p))
        return k

    def _hist_agg(self, interval_s: int, down: set[str]) -> dict:
        return {"date_histogram": {"field": "@timestamp", "fixed_interval": f"{int(interval_s)}s", "min_doc_count": 1},
                "aggs": self._metric_aggs(down)}

    def _series_from(self, buckets: list[dict]) -> pd.DataFrame:
        rows = []
        for b in buckets:
            row = {"time": pd.Timestamp(b["key"], unit="ms", tz="UTC"), "requests": b["doc_count"],
                   "chat_turns": b["chat"]["doc_count"], "completed": b["done"]["doc_count"], "input_tokens": int(b["in"]["value"]),
                   "output_tokens": int(b["out"]["value"]), "cost_usd": b["cost"]["value"],
                   "busy_s": b["busy"]["value"] / 1000.0}
            for name in ("ttft", "e2e"):
                for p, q in zip(PCTS, ("p50", "p95", "p99")):
                    row[f"{name}_{q}"] = self._pct(b[name], p)
            row.update(dialogues=0, completed_dialogues=0)
            rows.append(row)
        return pd.DataFrame(rows, columns=SERIES_COLUMNS)

    def series(self, w: Window, interval_s: int) -> pd.DataFrame:
        down = self._rated("down", w.start)
        r = self._search({"size": 0, "track_total_hits": True, "query": self._turns_query(w),
                          "aggs": {"t": self._hist_agg(interval_s, down)}})
        out = self._series_from(r["aggregations"]["t"]["buckets"])
        if 0 < int(r["hits"]["total"]["value"]) <= EXACT_MAX:
            _exact_series(out, self._latencies(w), interval_s)
        _, ok, ends = self._ended_conversations(w, with_ends=True)
        return with_dialogues(out, ends, ok, interval_s)

    def overview(self, w: Window, interval_s: int) -> tuple[Kpis, Kpis, Kpis, Kpis, pd.DataFrame]:
        """The Overview's numbers in ONE request: a ``filters`` aggregation with a bucket per
        window (this period, the previous one), today's cost, and the date histogram of this
        period, so the feedback join's terms filters are built once. The third and fourth Kpis
        (today, and yesterday up to the same time) carry only ``requests`` and ``cost_usd``."""
        prev, today = w.previous(), w.today()
        yday = today.shifted(-86400)
        lo = min(prev.start, yday.start)
        down = self._rated("down", lo)

        def rng(x: Window) -> dict:
            return {"range": {"@timestamp": {"gte": _ms(x.start), "lt": _ms(x.end), "format": "epoch_millis"}}}

        r = self._search({"size": 0, "query": self._turns_query(Window(lo, w.end)), "aggs": {
            "win": {"filters": {"filters": {"cur": rng(w), "prev": rng(prev)}},
                    "aggs": self._metric_aggs(down, None, dialogues=True)},
            # the Overview shows only today's cost
            "day": {"filters": {"filters": {"today": rng(today), "yday": rng(yday)}},
                    "aggs": {"cost": {"sum": {"field": "cost_usd"}}}},
            "t": {"filter": rng(w), "aggs": {"h": self._hist_agg(interval_s, down)}}}})
        b = r["aggregations"]["win"]["buckets"]
        cur, before = (self._kpis_from(b[key], int(b[key]["doc_count"]), x, None, down, False)
                       for key, x in (("cur", w), ("prev", prev)))
        series = self._series_from(r["aggregations"]["t"]["h"]["buckets"])
        ok, ends = self._finish(cur, w, series, interval_s)
        series = with_dialogues(series, ends, ok, interval_s)
        self._finish(before, prev)
        days = r["aggregations"]["day"]["buckets"]
        day, before_day = (Kpis(seconds=x.seconds, requests=int(days[key]["doc_count"]),
                                cost_usd=float(days[key]["cost"]["value"])) for key, x in (("today", today), ("yday", yday)))
        return cur, before, day, before_day, series

    def histogram(self, w: Window, field: str) -> pd.DataFrame:
        edges = histogram_edges_ms() + [float("inf")]
        ranges = [{"from": lo, "to": hi} if hi != float("inf") else {"from": lo} for lo, hi in zip(edges[:-1], edges[1:])]
        r = self._search({"size": 0, "query": self._turns_query(w),
                          "aggs": {"h": {"range": {"field": field, "ranges": ranges}}}})
        counts = [int(b["doc_count"]) for b in r["aggregations"]["h"]["buckets"]]
        return pd.DataFrame({"lo_ms": edges[:-1], "hi_ms": edges[1:], "count": counts})

    def _docs(self, hits: list[dict], text: bool = False) -> pd.DataFrame:
        rows = []
        for h in hits:
            s = h["_source"]
            usage = (s.get("gen_ai") or {}).get("usage") or {}
            row = {"time": pd.Timestamp(s["@timestamp"]).tz_convert("UTC"), "session_id": s.get("session_id"),
                   "request_id": s.get("request_id"), "turn_index": s.get("turn_index"),
                   "model_version": s.get("model_version"), "status": s.get("status"),
                   "latency_ms": s.get("latency_ms"), "ttft_ms": s.get("ttft_ms"),
                   "input_tokens": usage.get("input_tokens"), "output_tokens": usage.get("output_tokens"),
                   "cost_usd": s.get("cost_usd")}
            if text:
                row.update(prompt=s.get("prompt"), response=s.get("response"))
            rows.append(row)
        return pd.DataFrame(rows, columns=TURN_COLUMNS + (["prompt", "response"] if text else []))

    _SOURCE = ["@timestamp", "session_id", "request_id", "turn_index", "model_version", "status", "latency_ms",
               "ttft_ms", "gen_ai.usage", "cost_usd"]

    def slowest(self, w: Window, field: str, n: int = 20) -> pd.DataFrame:
        r = self._search({"size": n, "query": self._turns_query(w, {"exists": {"field": field}}),
                          "sort": [{field: "desc"}], "_source": self._SOURCE})
        return self._docs(r["hits"]["hits"])

    def quality_by_model(self, w: Window) -> pd.DataFrame:
        down, up = self._rated("down", w.start), self._rated("up", w.start)
        aggs = self._metric_aggs(down, up, percentiles=False)
        r = self._search({"size": 0, "query": self._turns_query(w, CHAT_FILTER),
                          "aggs": {"m": {"terms": {"field": "model_version", "size": 200, "order": {"_key": "asc"}},
                                         "aggs": aggs}}})
        models, ok = self._ended_conversations(w)
        rows = []
        for b in r["aggregations"]["m"]["buckets"]:
            mine = models == b["key"]
            rows.append({"model_version": b["key"], "turns": b["doc_count"], "completed": b["done"]["doc_count"],
                         "refused": b["refused"]["doc_count"], "failed": b["failed"]["doc_count"],
                         "rated_up": b["up"]["doc_count"] if up else 0, "rated_down": b["down"]["doc_count"] if down else 0,
                         "dialogues": int(mine.sum()), "completed_dialogues": int(ok[mine].sum())})
        return pd.DataFrame(rows, columns=QUALITY_COLUMNS)

    def completion_by_turn(self, w: Window, cap: int = 10) -> pd.DataFrame:
        down = self._rated("down", w.start)
        ranges = [{"key": str(i), "from": i, "to": i + 1} for i in range(cap)] + [{"key": str(cap), "from": cap}]
        r = self._search({"size": 0, "query": self._turns_query(w, CHAT_FILTER), "aggs": {"t": {
            "range": {"field": "turn_index", "ranges": ranges, "keyed": False},
            "aggs": {"done": {"filter": self._done_filter(down)}}}}})
        rows = [{"turn_index": int(b["key"]), "turns": b["doc_count"], "completed": b["done"]["doc_count"]}
                for b in r["aggregations"]["t"]["buckets"] if b["doc_count"]]
        return pd.DataFrame(rows, columns=["turn_index", "turns", "completed"]).astype(int)

    def cost_by_kind(self, w: Window) -> pd.DataFrame:
        """Requests, tokens and Σ cost_usd per ``request_kind`` (missing = chat), costliest first."""
        r = self._search({"size": 0, "query": self._turns_query(w), "aggs": {"k": {
            "terms": {"field": "request_kind", "missing": CHAT, "size": 20},
            "aggs": {"in": {"sum": {"field": _FIELD["input_tokens"]}}, "out": {"sum": {"field": _FIELD["output_tokens"]}},
                     "cost": {"sum": {"field": "cost_usd"}}}}}})
        rows = [{"request_kind": b["key"], "requests": b["doc_count"], "input_tokens": int(b["in"]["value"]),
                 "output_tokens": int(b["out"]["value"]), "cost_usd": float(b["cost"]["value"])}
                for b in r["aggregations"]["k"]["buckets"]]
        out = pd.DataFrame(rows, columns=KIND_COLUMNS)
        return out.sort_values(["cost_usd", "request_kind"], ascending=[False, True], ignore_index=True) if rows else out

    def models(self, w: Window) -> list[str]:
        r = self._search({"size": 0, "query": self._turns_query(w),
                          "aggs": {"m": {"terms": {"field": "model_version", "size": 200}}}})
        return sorted(b["key"] for b in r["aggregations"]["m"]["buckets"])

    def search_turns(self, w: Window, *, session: str = "", text: str = "", models=None, statuses=None,
                     limit: int = 200) -> pd.DataFrame:
        extra: list[dict] = []
        if session:
            pat = "*" + session.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?") + "*"
            extra.append({"bool": {"should": [{"wildcard": {"session_id": pat}}, {"wildcard": {"request_id": pat}}],
                                   "minimum_should_match": 1}})
        if text:
            extra.append({"multi_match": {"query": text, "type": "phrase", "fields": ["prompt", "response"]}})
        if models:
            extra.append({"terms": {"model_version": list(models)}})
        if statuses:
            extra.append({"terms": {"status": list(statuses)}})
        r = self._search({"size": int(limit), "query": self._turns_query(w, *extra), "sort": [{"@timestamp": "desc"}],
                          "_source": self._SOURCE + ["prompt", "response"]})
        return self._docs(r["hits"]["hits"], text=True)

    def conversation(self, session_id: str) -> pd.DataFrame:
        r = self._search({"size": 1000, "query": {"bool": {"filter": [
            {"term": {"event.dataset": SESSION_DATASET}}, {"term": {"session_id": session_id}}, *self._tags()]}},
            "sort": [{"@timestamp": "asc"}, {"turn_index": "asc"}], "_source": self._SOURCE + ["prompt", "response"]})
        return self._docs(r["hits"]["hits"], text=True)

    def health(self) -> dict[str, Any]:
        return {"store": self.url, "index": self.index, "requests": self.requests_made}


def _exact_series(series: pd.DataFrame, vals: pd.DataFrame, interval_s: int) -> None:
    """Replace the series' engine percentiles with numpy's, per bucket, from the values."""
    if vals.empty:
        return
    step = int(interval_s) * 1000
    b = (vals["t"] // step) * step
    key = series["time"].map(lambda t: int(t.timestamp() * 1000))
    for col, name in (("ttft_ms", "ttft"), ("latency_ms", "e2e")):
        q = vals.assign(_b=b).groupby("_b")[col].quantile([0.5, 0.95, 0.99]).unstack()
        for qq, suffix in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            if qq in q:
                series[f"{name}_{suffix}"] = key.map(q[qq]).astype("float64").to_numpy()
