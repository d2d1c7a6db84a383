"""The alert thresholds the dashboard marks its cards and charts with.

They come from the alertd config the dashboard is given (``seekwatch dashboard
--alerts-config FILE``), merged over ``contracts/defaults/alerts.yaml`` the way alertd merges
it (``rules.<name>`` key by key), so a card turns red exactly when the alert's condition
holds on the card's numbers. Only the rules the cards show are read: ``p99_latency``,
``p99_e2e_latency``, ``completion_rate`` (dialogue completion) and ``turn_completion``; a
disabled rule marks nothing. alertd itself checks the file's schema; a file this reader
cannot use (missing, not YAML) is reported on the page and the defaults are used.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from contracts.defaults import default_config_path

#: rule -> (中文, English) title, as alertd's messages name them
TITLES = {
    "p99_latency": ("P99 延迟过高", "P99 latency high"),
    "p99_e2e_latency": ("端到端 P99 延迟过高", "End-to-end P99 latency high"),
    "completion_rate": ("对话完成率过低", "Dialogue completion rate low"),
    "turn_completion": ("轮次完成率过低", "Turn completion rate low"),
}


@dataclass(frozen=True)
class AlertThreshold:
    name: str
    threshold: float          # ms for latency rules, a ratio for completion rules
    below: bool               # the alert fires below the threshold (completion) or above it (latency)
    metric: str = ""          # ttft | e2e (latency rules)
    quantile: float = 0.99

    @property
    def title(self) -> str:
        zh, en = TITLES[self.name]
        return f"{zh} / {en}"

    @property
    def condition(self) -> str:
        if self.below:
            return f"< {self.threshold * 100:g} %"
        return f"P{self.quantile * 100:g} > {self.threshold:g} ms"

    def breached(self, value: float | None) -> bool:
        if value is None or value != value:
            return False
        return value < self.threshold if self.below else value > self.threshold


@dataclass
class Thresholds:
    rules: dict[str, AlertThreshold] = field(default_factory=dict)
    source: str = ""
    error: str | None = None

    def latency(self, metric: str, quantile: float = 0.99) -> AlertThreshold | None:
        """The rule on ``metric`` (ttft | e2e) at ``quantile``, if one is enabled."""
        for r in self.rules.values():
            if r.metric == metric and abs(r.quantile - quantile) < 1e-9:
                return r
        return None

    @property
    def dialogue(self) -> AlertThreshold | None:
        return self.rules.get("completion_rate")

    @property
    def turn(self) -> AlertThreshold | None:
        return self.rules.get("turn_completion")

    @classmethod
    def load(cls, path: str | None = None) -> "Thresholds":
        default = default_config_path("alerts")
        data = yaml.safe_load(Path(default).read_text("utf-8"))
        rules = {k: dict(v or {}) for k, v in (data.get("rules") or {}).items()}
        error = None
        if path:
            try:
                user = yaml.safe_load(Path(path).read_text("utf-8")) or {}
                if not isinstance(user, dict):
                    raise ValueError("not a mapping")
                for k, v in (user.get("rules") or {}).items():
                    rules[k] = {**rules.get(k, {}), **(v or {})}
            except (OSError, ValueError, yaml.YAMLError) as exc:
                error = f"{path}: {exc}; using the built-in thresholds"
        out: dict[str, AlertThreshold] = {}
        for name, r in rules.items():
            if name not in TITLES or not r.get("enabled", True):
                continue
            if name in ("p99_latency", "p99_e2e_latency"):
                metric = "e2e" if name == "p99_e2e_latency" else r.get("metric", "ttft")
                out[name] = AlertThreshold(name, float(r["threshold_ms"]), False, metric, float(r.get("quantile", 0.99)))
            else:
                out[name] = AlertThreshold(name, float(r["threshold"]), True)
        return cls(out, str(path or default), error)
