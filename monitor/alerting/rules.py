"""The threshold matrix as code: observations in, one :class:`Evaluation` per alert key out.

Rules never know which source produced the observations. ``active`` is True (condition
holds), False (it does not) or None (unknown — too little history, the node is down, or the
source itself failed — the alert keeps its current state).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .model import UNKNOWN, Completion, Dialogues, NodeObservation

if TYPE_CHECKING:  # the config module names its rules from here, so no import at run time
    from .config import AlertdConfig

FLEET = "fleet"

#: every rule of the threshold matrix, by the name its config key and ``rule`` label carry
RULE_NAMES = ("p99_latency", "p99_e2e_latency", "gpu_utilization", "completion_rate", "turn_completion", "no_data",
              "scaling")

#: rule name -> ``alertname``: what Alertmanager, its webhook payload and the exported
#: Prometheus rules call the alert. CamelCase with a ``Seekwatch`` prefix, as Prometheus
#: alert names are, so one rule has the same name in alertd's webhook and in Alertmanager.
ALERTNAMES = {
    "p99_latency": "SeekwatchP99LatencyHigh",
    "p99_e2e_latency": "SeekwatchE2eP99LatencyHigh",
    "gpu_utilization": "SeekwatchGpuUtilizationHigh",
    "completion_rate": "SeekwatchCompletionRateLow",
    "turn_completion": "SeekwatchTurnCompletionLow",
    "no_data": "SeekwatchNoData",
    "scaling": "SeekwatchScalingRecommended",
}


@dataclass
class Evaluation:
    labels: dict[str, str]
    active: bool | None
    value: float | None = None
    threshold: float | None = None
    for_s: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return alert_key(self.labels)


def alert_key(labels: dict[str, str]) -> str:
    """Identity of an alert: rule + node (+ gpu / direction). Severity is not part of it."""
    parts = [labels.get("rule", ""), labels.get("node", "")]
    for extra in ("gpu", "direction"):
        if labels.get(extra):
            parts.append(f"{extra}={labels[extra]}")
    return "|".join(parts)


@dataclass
class Recommendation:
    """The scaling rule (load > high: +N, load < low: -N) applied to the fleet's load."""

    load: float | None          # fleet load ratio, None when unknown
    delta: int                  # +scale_up, -scale_down or 0
    nodes: int


@dataclass
class Result:
    evaluations: list[Evaluation]
    frozen_nodes: set[str]      # nodes whose other alerts must keep their state
    recommendation: Recommendation | None
    nodes: list[str]


def _labels(rule: str, node: str, cfg_rule: dict[str, Any], **extra: str) -> dict[str, str]:
    lab = {"rule": rule, "node": node, "severity": cfg_rule.get("severity", "warning")}
    lab.update({k: v for k, v in extra.items() if v is not None})
    return lab


def evaluate(cfg: AlertdConfig, observations: list[NodeObservation],
             source_error: tuple[str, str] | None = None) -> Result:
    evals: list[Evaluation] = []
    frozen: set[str] = set()
    nd = cfg.rule("no_data")
    if source_error is not None:
        node, msg = source_error
        if nd:
            evals.append(Evaluation(_labels("no_data", node, nd), True, for_s=nd["for"], detail={"error": msg}))
        return Result(evals, {"*"}, None, [node])

    for o in observations:
        if nd:
            evals.append(Evaluation(_labels("no_data", o.node, nd), not o.up, for_s=nd["for"],
                                    detail={"error": o.error} if o.error else {}))
        if not o.up:
            frozen.add(o.node)
            continue
        for name, lat, part in (("p99_latency", o.latency, "latency"), ("p99_e2e_latency", o.latency_e2e, "latency_e2e")):
            r = cfg.rule(name)
            if not r:
                continue
            thr = r["threshold_ms"] / 1000.0
            active = None if lat is UNKNOWN else (lat is not None and lat > thr)
            if active is False and part in o.partial:
                active = None
            metric = "e2e" if name == "p99_e2e_latency" else r.get("metric", "ttft")
            evals.append(Evaluation(_labels(name, o.node, r), active,
                                    value=None if lat is UNKNOWN else lat, threshold=thr, for_s=r["for"],
                                    detail={"metric": metric, "quantile": r.get("quantile", 0.99),
                                            "window": r["window"]}))
        # 对话完成率 (per conversation) and 轮次完成率 (per chat turn): the same rule over
        # different counts; the observation's own fields are the alert's detail
        for name, x, part in (("completion_rate", o.dialogues, "dialogues"), ("turn_completion", o.completion, "completion")):
            r = cfg.rule(name)
            if not r:
                continue
            if x is UNKNOWN:
                active, value, detail = None, None, {}
            else:
                assert isinstance(x, (Dialogues, Completion))
                rate = x.rate
                enough = x.samples >= r["min_samples"]
                active = bool(enough and rate is not None and rate < r["threshold"])
                if not active and part in o.partial:
                    active = None
                value = rate
                detail = dataclasses.asdict(x)
            detail.update(window=r["window"], min_samples=r["min_samples"])
            evals.append(Evaluation(_labels(name, o.node, r), active, value=value,
                                    threshold=r["threshold"], for_s=r["for"], detail=detail))
        r = cfg.rule("gpu_utilization")
        if r:
            for gpu, v in sorted(o.gpu.items()):
                active = None if v is UNKNOWN else v > r["threshold"]
                evals.append(Evaluation(_labels("gpu_utilization", o.node, r, gpu=gpu), active,
                                        value=None if v is UNKNOWN else v, threshold=r["threshold"],
                                        for_s=0.0, detail={"window": r["for"]}))

    rec = None
    sc = cfg.rule("scaling")
    if sc:
        live = [o for o in observations if o.up]
        if live and all(o.running is not UNKNOWN and o.running is not None for o in live):
            load = sum(o.running for o in live) / (sc["capacity"] * len(live))
            delta = 0
            if load > sc["high"]:
                delta = sc["scale_up"]
            elif load < sc["low"] and len(live) > sc.get("min_instances", 1):
                delta = -sc["scale_down"]
            rec = Recommendation(load, delta, len(live))
        for direction in ("up", "down"):
            active = None if rec is None else (rec.delta > 0 if direction == "up" else rec.delta < 0)
            thr = sc["high"] if direction == "up" else sc["low"]
            evals.append(Evaluation(_labels("scaling", FLEET, sc, direction=direction), active,
                                    value=None if rec is None else rec.load, threshold=thr, for_s=sc["for"],
                                    detail={"instances": (sc["scale_up"] if direction == "up" else -sc["scale_down"]),
                                            "nodes": len(live), "capacity": sc["capacity"], "window": sc["window"]}))
    return Result(evals, frozen, rec, [o.node for o in observations])
