"""Elasticsearch / OpenSearch source: every number comes from a server-side aggregation
(percentiles, date_histogram, terms, range, cardinality, filter). The dashboard never pulls
all documents: the only documents fetched are the ones a page lists (the N slowest turns, a
search page of at most ``limit`` turns, one conversation).

Through the one log-store client (``contracts.logstore``), against the index pattern ``seekwatch-*`` (session records in
``seekwatch-sessions``, feedback in ``seekwatch-feedback``; fields as in the index template:
keywords for ids, status and model_version).

The feedback join: the ``request_id`` of every thumbs-down (and thumbs-up) feedback record
since the range's start is collected with a paged ``composite`` aggregation (feedback is a
small fraction of the turns), then used in ``terms`` filters. Dialogue counts use
``cardinality`` (HyperLogLog++, precision_threshold 40000: exact in practice below ~40k
sessions per range, within about 1 % above).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Mapping

import pandas as pd

from contracts.log_schema import FEEDBACK_DATASET, SESSION_DATASET
from contracts.logstore import StoreClient, StoreError, StoreUnavailable

from .base import QUALITY_COLUMNS, SERIES_COLUMNS, TURN_COLUMNS, Kpis, Window, histogram_edges_ms

FAILED = ["error", "aborted", "truncated", "rejected"]
PCTS = [50.0, 95.0, 99.0]
#: HDR histogram percentiles: 3 significant digits (within 0.1 % of the sample value), and much
#: cheaper than t-digest at high compression on millions of latencies.
PCT_METHOD = {"hdr": {"number_of_significant_value_digits": 3}}
TERMS_CHUNK = 60000  # below the engines' default index.max_terms_count (65536)
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
                 timeout: float = 30.0, feedback_ttl_s: float = 5.0):
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

    def _rated(self, rating: str, since) -> set[str]:
        key = (rating, _ms(since))
        now = time.monotonic()
        with self._lock:
            # ids collected since an earlier time are a superset that gives the same answer:
            # a turn in the range can only be rated after the range's start
            for (r, s), (at, ids) in self._fb_cache.items():
                if r == rating and s <= key[1] and now - at < self.feedback_ttl_s:
                    return ids
        ids: set[str] = set()
        after = None
        while True:
            comp: dict[str, Any] = {"size": 10000, "sources": [{"rid": {"terms": {"field": "request_id"}}}]}
            if after:
                comp["after"] = after
            body = {"size": 0, "query": {"bool": {"filter": [
                {"term": {"event.dataset": FEEDBACK_DATASET}}, {"term": {"rating": rating}},
                {"range": {"@timestamp": {"gte": _ms(since), "format": "epoch_millis"}}}, *self._tags()]}},
                "aggs": {"ids": {"composite": comp}}}
            agg = self._search(body)["aggregations"]["ids"]
            ids.update(b["key"]["rid"] for b in agg["buckets"])
            after = agg.get("after_key")
            if len(agg["buckets"]) < comp["size"] or not after:
                break
        with self._lock:
            self._fb_cache[key] = (now, ids)
        return ids

    @staticmethod
    def _terms(field: str, values: set[str]) -> list[dict]:
        vals = sorted(values)
        return [{"terms": {field: vals[i:i + TERMS_CHUNK]}} for i in range(0, len(vals), TERMS_CHUNK)] or \
            [{"terms": {field: []}}]

    def _done_filter(self, down: set[str]) -> dict:
        return {"bool": {"filter": [{"term": {"status": "completed"}}],
                         "must_not": self._terms("request_id", down) if down else []}}

    def _not_done_filter(self, down: set[str]) -> dict:
        should = [{"bool": {"must_not": [{"term": {"status": "completed"}}]}}]
        if down:
            should += self._terms("request_id", down)
        return {"bool": {"should": should, "minimum_should_match": 1}}

    def _metric_aggs(self, down: set[str], up: set[str] | None = None, percentiles: bool = True,
                     dialogues: bool = False) -> dict:
        aggs: dict[str, Any] = {
            "in": {"sum": {"field": _FIELD["input_tokens"]}},
            "out": {"sum": {"field": _FIELD["output_tokens"]}},
            "cost": {"sum": {"field": "cost_usd"}},
            "busy": {"sum": {"field": "latency_ms"}},
            "done": {"filter": self._done_filter(down)},
        }
        if percentiles:
            aggs["ttft"] = {"percentiles": {"field": "ttft_ms", "percents": PCTS, **PCT_METHOD}}
            aggs["e2e"] = {"percentiles": {"field": "latency_ms", "percents": PCTS, **PCT_METHOD}}
        if dialogues:
            aggs["sessions"] = {"cardinality": {"field": "session_id", "precision_threshold": 40000}}
            aggs["bad"] = {"filter": self._not_done_filter(down),
                           "aggs": {"s": {"cardinality": {"field": "session_id", "precision_threshold": 40000}}}}
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
        return self._kpis_from(r["aggregations"], int(r["hits"]["total"]["value"]), w, up, down, detail)

    def _kpis_from(self, a: Mapping, count: int, w: Window, up, down, detail: bool) -> Kpis:
        k = Kpis(seconds=w.seconds)
        k.requests = count
        if not k.requests:
            return k
        k.completed = int(a["done"]["doc_count"])
        k.sessions = int(a["sessions"]["value"])
        k.completed_dialogues = max(0, k.sessions - int(a["bad"]["s"]["value"]))
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
                   "completed": b["done"]["doc_count"], "input_tokens": int(b["in"]["value"]),
                   "output_tokens": int(b["out"]["value"]), "cost_usd": b["cost"]["value"],
                   "busy_s": b["busy"]["value"] / 1000.0}
            for name in ("ttft", "e2e"):
                for p, q in zip(PCTS, ("p50", "p95", "p99")):
                    row[f"{name}_{q}"] = self._pct(b[name], p)
            rows.append(row)
        return pd.DataFrame(rows, columns=SERIES_COLUMNS)

    def series(self, w: Window, interval_s: int) -> pd.DataFrame:
        down = self._rated("down", w.start)
        r = self._search({"size": 0, "query": self._turns_query(w), "aggs": {"t": self._hist_agg(interval_s, down)}})
        return self._series_from(r["aggregations"]["t"]["buckets"])

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
        days = r["aggregations"]["day"]["buckets"]
        day, before_day = (Kpis(seconds=x.seconds, requests=int(days[key]["doc_count"]),
                                cost_usd=float(days[key]["cost"]["value"])) for key, x in (("today", today), ("yday", yday)))
        return cur, before, day, before_day, self._series_from(r["aggregations"]["t"]["h"]["buckets"])

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
        aggs = self._metric_aggs(down, up, percentiles=False, dialogues=True)
        r = self._search({"size": 0, "query": self._turns_query(w),
                          "aggs": {"m": {"terms": {"field": "model_version", "size": 200, "order": {"_key": "asc"}},
                                         "aggs": aggs}}})
        rows = []
        for b in r["aggregations"]["m"]["buckets"]:
            sessions = int(b["sessions"]["value"])
            rows.append({"model_version": b["key"], "turns": b["doc_count"], "completed": b["done"]["doc_count"],
                         "refused": b["refused"]["doc_count"], "failed": b["failed"]["doc_count"],
                         "rated_up": b["up"]["doc_count"] if up else 0, "rated_down": b["down"]["doc_count"] if down else 0,
                         "sessions": sessions, "completed_dialogues": max(0, sessions - int(b["bad"]["s"]["value"]))})
        return pd.DataFrame(rows, columns=QUALITY_COLUMNS)

    def completion_by_turn(self, w: Window, cap: int = 10) -> pd.DataFrame:
        down = self._rated("down", w.start)
        ranges = [{"key": str(i), "from": i, "to": i + 1} for i in range(cap)] + [{"key": str(cap), "from": cap}]
        r = self._search({"size": 0, "query": self._turns_query(w), "aggs": {"t": {
            "range": {"field": "turn_index", "ranges": ranges, "keyed": False},
            "aggs": {"done": {"filter": self._done_filter(down)}}}}})
        rows = [{"turn_index": int(b["key"]), "turns": b["doc_count"], "completed": b["done"]["doc_count"]}
                for b in r["aggregations"]["t"]["buckets"] if b["doc_count"]]
        return pd.DataFrame(rows, columns=["turn_index", "turns", "completed"]).astype(int)

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
