"""PromQL source: the same observations as :mod:`.scrape`, computed by a Prometheus server.

Used when ``prometheus_url`` is set. Nodes are the ``instance`` label values of
``up{job="<prometheus_job>"}``; each rule input is one instant query evaluated at the same
timestamp:

===================  ==========================================================================
latency              ``histogram_quantile(q, sum by (instance, le) (rate(<metric>_bucket[window])))``
turn completion      ``sum by (instance, status) (increase(seekwatch_requests_total{request_kind=~"chat|"}[window]))``
                     and ``sum by (instance) (increase(seekwatch_completed_turns_rated_down_total[window]))``
dialogue completion  ``sum by (instance, outcome) (increase(seekwatch_conversations_ended_total[window]))``
gpu                  ``avg_over_time(seekwatch_gpu_utilization_ratio[for])``
load                 ``sum by (instance) (avg_over_time(seekwatch_requests_running[window]))``
no data              ``up == 0``, or no ``seekwatch_`` series from an up target
===================  ==========================================================================
"""
from __future__ import annotations

import math
import time
from typing import Any
from urllib.parse import urlsplit

from contracts import metrics as M

from .config import AlertdConfig
from .durations import format_duration
from .model import UNKNOWN, Completion, Dialogues, NodeObservation
from .scrape import LATENCY_METRICS


class SourceError(Exception):
    """The source itself is unreachable: every node's alerts keep their state."""

    def __init__(self, node: str, message: str):
        super().__init__(message)
        self.node = node


def queries(cfg: AlertdConfig) -> dict[str, str]:
    """The PromQL the source runs, keyed by purpose (also used by the exporter and the docs)."""
    sel = f'job="{cfg.prometheus_job}"'
    q: dict[str, str] = {
        "up": f"up{{{sel}}}",
        "present": f'count by (instance) ({{{sel}, __name__=~"{M.PREFIX}.+"}})',
    }
    p99 = cfg.rule("p99_latency")
    if p99:
        metric = LATENCY_METRICS[p99.get("metric", "ttft")]
        q["latency"] = (f"histogram_quantile({p99.get('quantile', 0.99)}, sum by (instance, le) "
                        f"(rate({metric}_bucket{{{sel}}}[{format_duration(p99['window'])}])))")
        # scrapes inside the window: fewer than two means "not enough data yet", as with direct scrape
        q["latency_n"] = f"count_over_time(up{{{sel}}}[{format_duration(p99['window'])}])"
    p99e = cfg.rule("p99_e2e_latency")
    if p99e:
        w = format_duration(p99e["window"])
        q["latency_e2e"] = (f"histogram_quantile({p99e.get('quantile', 0.99)}, sum by (instance, le) "
                            f"(rate({M.REQUEST_DURATION}_bucket{{{sel}}}[{w}])))")
        q["latency_e2e_n"] = f"count_over_time(up{{{sel}}}[{w}])"
    comp = cfg.rule("turn_completion")
    if comp:
        w = format_duration(comp["window"])
        # request_kind="" also matches series without the label (nodes older than request kinds)
        q["requests"] = f'sum by (instance, status) (increase({M.REQUESTS_TOTAL}{{{sel}, request_kind=~"chat|"}}[{w}]))'
        q["down"] = f"sum by (instance) (increase({M.COMPLETED_TURNS_RATED_DOWN_TOTAL}{{{sel}}}[{w}]))"
        q["requests_n"] = f"count_over_time(up{{{sel}}}[{w}])"
    dial = cfg.rule("completion_rate")
    if dial:
        w = format_duration(dial["window"])
        q["conversations"] = f"sum by (instance, outcome) (increase({M.CONVERSATIONS_ENDED_TOTAL}{{{sel}}}[{w}]))"
        q["conversations_n"] = f"count_over_time(up{{{sel}}}[{w}])"
    gpu = cfg.rule("gpu_utilization")
    if gpu:
        w = format_duration(max(gpu["for"], cfg.evaluation_interval))
        q["gpu"] = f"avg_over_time({M.GPU_UTILIZATION}{{{sel}}}[{w}])"
    sc = cfg.rule("scaling")
    if sc:
        q["running"] = f"sum by (instance) (avg_over_time({M.REQUESTS_RUNNING}{{{sel}}}[{format_duration(sc['window'])}]))"
    return q


class PromQLSource:
    kind = "promql"

    def __init__(self, cfg: AlertdConfig):
        import httpx

        self.cfg = cfg
        self.base = cfg.prometheus_url.rstrip("/")
        self.pseudo_node = urlsplit(self.base).netloc or self.base
        self._httpx = httpx
        self._client = httpx.Client(timeout=cfg.scrape_timeout, trust_env=False, headers=cfg.scrape_headers,
                                    verify=cfg.ssl_context() if self.base.startswith("https:") else True)
        self.queries = queries(cfg)

    def _query(self, promql: str, at: float) -> list[dict[str, Any]]:
        httpx = self._httpx
        try:
            r = self._client.get(f"{self.base}/api/v1/query", params={"query": promql, "time": f"{at:.3f}"})
        except httpx.HTTPError as exc:
            raise SourceError(self.pseudo_node, f"Prometheus {self.base} unreachable: {type(exc).__name__}: {exc}") from None
        try:
            body = r.json()
        except ValueError:
            raise SourceError(self.pseudo_node, f"Prometheus {self.base} answered HTTP {r.status_code}, not JSON") from None
        if r.status_code != 200 or body.get("status") != "success":
            raise SourceError(self.pseudo_node, f"Prometheus query failed ({r.status_code}): {body.get('error', '?')}")
        return body["data"]["result"]

    @staticmethod
    def _val(item: dict[str, Any]) -> float:
        return float(item["value"][1])

    def collect(self, now: float | None = None) -> list[NodeObservation]:
        at = time.time() if now is None else now
        res = {k: self._query(q, at) for k, q in self.queries.items()}
        nodes: dict[str, NodeObservation] = {}
        for item in res["up"]:
            inst = item["metric"].get("instance", "?")
            up = self._val(item) == 1
            nodes[inst] = NodeObservation(node=inst, up=up, error=None if up else
                                          f"Prometheus cannot scrape {inst} (up == 0)")
        present = {i["metric"].get("instance") for i in res["present"]}
        for inst, o in nodes.items():
            if o.up and inst not in present:
                o.up, o.error = False, f"{inst} exposes no seekwatch_ series"
        live = {k: o for k, o in nodes.items() if o.up}

        def enough(key: str) -> set[str]:
            return {i["metric"].get("instance") for i in res.get(key, []) if self._val(i) >= 2}

        for key in ("latency", "latency_e2e"):   # the observation's attribute of the same name
            if key not in res:
                continue
            ok = enough(f"{key}_n")
            for inst, o in live.items():
                setattr(o, key, None if inst in ok else UNKNOWN)
            for item in res[key]:
                o = live.get(item["metric"].get("instance"))
                if o is not None and getattr(o, key) is not UNKNOWN:
                    v = self._val(item)
                    setattr(o, key, None if math.isnan(v) else v)
        if "requests" in res:
            per: dict[str, dict[str, float]] = {}
            for item in res["requests"]:
                per.setdefault(item["metric"].get("instance"), {})[item["metric"].get("status", "")] = self._val(item)
            down = {i["metric"].get("instance"): self._val(i) for i in res["down"]}
            ok = enough("requests_n")
            for inst, o in live.items():
                if inst not in ok:
                    continue          # stays UNKNOWN
                st = per.get(inst, {})
                o.completion = Completion(total=sum(st.values()), completed=st.get("completed", 0.0),
                                          down=down.get(inst, 0.0))
        if "conversations" in res:
            per = {}
            for item in res["conversations"]:
                per.setdefault(item["metric"].get("instance"), {})[item["metric"].get("outcome", "")] = self._val(item)
            ok = enough("conversations_n")
            for inst, o in live.items():
                if inst in ok:
                    oc = per.get(inst, {})
                    o.dialogues = Dialogues(ended=sum(oc.values()), completed=oc.get("completed", 0.0))
        if "gpu" in res:
            for item in res["gpu"]:
                o = live.get(item["metric"].get("instance"))
                if o is not None:
                    o.gpu[item["metric"].get("gpu", "")] = self._val(item)
        if "running" in res:
            for item in res["running"]:
                o = live.get(item["metric"].get("instance"))
                if o is not None:
                    o.running = self._val(item)
        if not nodes:
            raise SourceError(self.pseudo_node, f'Prometheus {self.base} knows no target of job "{self.cfg.prometheus_job}"')
        return list(nodes.values())

    def close(self) -> None:
        self._client.close()
