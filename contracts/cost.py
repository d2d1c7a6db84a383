"""The cost model: what the self-hosted DeepSeek service costs, per turn, per 1k tokens, per
session, per completed dialogue, per day and per month, and how that compares with the other
deployment modes (on-premises, cloud on-demand, reserved) and with hosted API prices.

It lives in the bottom layer because two parts compute with it: the node (``cost_usd`` of
every log record, the budget of NextChat's balance query) and the dashboard's Cost page.
The wire shapes of NextChat's balance query belong to the route that serves them
(``inference/billing_router.py``). Configuration is YAML (``contracts/defaults/cost.yaml`` by default),
checked against ``contracts/cost.schema.json``; the formulas are written out in ``docs/cost.md``.
Imports nothing heavy: PyYAML and jsonschema are imported only when a file is loaded.
"""
from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

SCHEMA_PATH = Path(__file__).with_name("cost.schema.json")


@dataclass(frozen=True)
class Mode:
    """One deployment mode: what ONE serving instance costs a month, and its latency."""

    name: str
    monthly_usd: float
    latency_ms: float | None = None
    label: str = ""


@dataclass(frozen=True)
class ApiPrice:
    name: str
    input_per_mtok: float
    output_per_mtok: float

    def cost_usd(self, input_tokens: float, output_tokens: float) -> float:
        return input_tokens / 1e6 * self.input_per_mtok + output_tokens / 1e6 * self.output_per_mtok


@dataclass(frozen=True)
class Volume:
    """What the service did over ``seconds`` of wall-clock time (a dashboard time range)."""

    seconds: float
    turns: int = 0
    sessions: int = 0
    completed_dialogues: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    #: Sum of the records' ``cost_usd`` (the share of the fixed cost the turns used).
    allocated_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return int(self.input_tokens) + int(self.output_tokens)


def _div(a: float, b: float) -> float | None:
    return None if not b else a / b


@dataclass
class CostModel:
    deployment: str
    modes: dict[str, Mode]
    instances: int = 1
    gpu_count: int = 1
    hours_per_month: float = 730.0
    allocation_method: str = "slot_seconds"
    concurrency: int = 50
    reference_tokens_per_s: float = 1000.0
    input_token_weight: float = 0.25
    api_prices: dict[str, ApiPrice] = field(default_factory=dict)
    monthly_budget_usd: float | None = None
    scale_high: float = 0.8
    scale_low: float = 0.3
    scale_up: int = 2
    scale_down: int = 1
    min_instances: int = 1
    max_instances: int | None = None
    source: str = "<dict>"

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | None = None) -> "CostModel":
        """Load (and cache, per path and mtime) a cost config; ``None`` means the defaults.

        Raises :class:`contracts.config.ConfigError` with a one-line message when the file is
        missing, not YAML, breaks the schema or names a deployment mode it does not define.
        """
        from contracts.defaults import default_config_path

        p = Path(path) if path else default_config_path("cost")
        try:
            mtime = p.stat().st_mtime
        except OSError:
            mtime = -1.0
        key = (str(p.resolve()) if mtime >= 0 else str(p), mtime)
        with _LOAD_LOCK:
            hit = _LOADED.get(key)
        if hit is not None:
            return hit
        from contracts.config import load_yaml_config

        data = load_yaml_config(p, load_schema())
        model = cls.from_dict(data, source=str(p))
        with _LOAD_LOCK:
            _LOADED[key] = model
        return model

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "CostModel":
        from contracts.config import ConfigError, check_against_schema

        check_against_schema(data, load_schema(), source)
        modes = {
            name: Mode(name, float(m["monthly_usd"]), m.get("latency_ms"), m.get("label", name))
            for name, m in data["modes"].items()
        }
        if data["deployment"] not in modes:
            raise ConfigError(
                f"{source}: deployment: {data['deployment']!r} is not one of the modes ({', '.join(modes)})"
            )
        alloc = data.get("allocation") or {}
        scaling = data.get("scaling") or {}
        if scaling.get("low", 0.3) >= scaling.get("high", 0.8):
            raise ConfigError(f"{source}: scaling: low must be below high")
        prices = {
            name: ApiPrice(name, float(p["input_per_mtok"]), float(p["output_per_mtok"]))
            for name, p in (data.get("api_prices") or {}).items()
        }
        return cls(
            deployment=data["deployment"],
            modes=modes,
            instances=int(data.get("instances", 1)),
            gpu_count=int(data.get("gpu_count", 1)),
            hours_per_month=float(data.get("hours_per_month", 730)),
            allocation_method=alloc.get("method", "slot_seconds"),
            concurrency=int(alloc.get("concurrency", 50)),
            reference_tokens_per_s=float(alloc.get("reference_tokens_per_s", 1000)),
            input_token_weight=float(alloc.get("input_token_weight", 0.25)),
            api_prices=prices,
            monthly_budget_usd=data.get("monthly_budget_usd"),
            scale_high=float(scaling.get("high", 0.8)),
            scale_low=float(scaling.get("low", 0.3)),
            scale_up=int(scaling.get("scale_up", 2)),
            scale_down=int(scaling.get("scale_down", 1)),
            min_instances=int(scaling.get("min_instances", 1)),
            max_instances=scaling.get("max_instances"),
            source=source,
        )

    # ------------------------------------------------------------------ fixed cost
    @property
    def mode(self) -> Mode:
        return self.modes[self.deployment]

    @property
    def month_seconds(self) -> float:
        return self.hours_per_month * 3600.0

    def monthly_fixed_usd(self, mode: str | None = None, instances: int | None = None) -> float:
        """What the deployment costs a month: instances x the mode's monthly cost."""
        m = self.modes[mode or self.deployment]
        return m.monthly_usd * (self.instances if instances is None else instances)

    def period_cost_usd(self, seconds: float, mode: str | None = None, instances: int | None = None) -> float:
        """The fixed cost that accrues over ``seconds`` of wall-clock time."""
        return self.monthly_fixed_usd(mode, instances) * seconds / self.month_seconds

    def cost_per_day_usd(self, mode: str | None = None) -> float:
        return self.period_cost_usd(86400.0, mode)

    def gpu_hour_usd(self, mode: str | None = None) -> float:
        """One GPU-hour in this mode (the instance's monthly cost over its GPUs and hours)."""
        return self.modes[mode or self.deployment].monthly_usd / (self.gpu_count * self.hours_per_month)

    # ------------------------------------------------------------------ per turn
    @property
    def slot_second_usd(self) -> float:
        """Price of one of an instance's ``concurrency`` slots for one second."""
        return self.mode.monthly_usd / (self.month_seconds * self.concurrency)

    @property
    def weighted_token_usd(self) -> float:
        """Price of one (output-equivalent) token at the reference throughput."""
        return self.mode.monthly_usd / (self.month_seconds * self.reference_tokens_per_s)

    def turn_cost_usd(self, *, input_tokens: int, output_tokens: int, latency_s: float) -> float:
        """The share of the fixed monthly cost one turn used (``cost_usd`` of its log record).

        ``slot_seconds`` (default): an instance serves ``concurrency`` streams at once, so a
        turn that held a slot for ``latency_s`` costs ``latency_s x monthly / (month_s x
        concurrency)``. Summed over a month at full load this is exactly the monthly cost;
        idle capacity is not charged to anyone (the Cost page shows it as unused).
        ``tokens``: ``(output + input_token_weight x input) x monthly / (month_s x
        reference_tokens_per_s)``.
        """
        if self.allocation_method == "tokens":
            units = max(0, output_tokens) + self.input_token_weight * max(0, input_tokens)
            return units * self.weighted_token_usd
        lat = latency_s if latency_s and math.isfinite(latency_s) and latency_s > 0 else 0.0
        return lat * self.slot_second_usd

    # ------------------------------------------------------------------ over a time range
    def summarize(self, v: Volume) -> dict[str, Any]:
        """Cost KPIs for a time range (see docs/cost.md for each formula)."""
        period = self.period_cost_usd(v.seconds)
        scale = _div(self.month_seconds, v.seconds) or 0.0
        return {
            "period_cost_usd": period,
            "allocated_usd": v.allocated_usd,
            "capacity_used_ratio": _div(v.allocated_usd, period),
            "cost_per_1k_tokens_usd": _div(period * 1000.0, v.tokens),
            "cost_per_session_usd": _div(period, v.sessions),
            "cost_per_turn_usd": _div(period, v.turns),
            "cost_per_completed_dialogue_usd": _div(period, v.completed_dialogues),
            "cost_per_day_usd": self.cost_per_day_usd(),
            "monthly_projection_usd": self.monthly_fixed_usd(),
            "monthly_tokens_projection": v.tokens * scale,
            "monthly_turns_projection": v.turns * scale,
        }

    def mode_comparison(self, v: Volume) -> list[dict[str, Any]]:
        """Every deployment mode at the current volume and instance count."""
        monthly_tokens = v.tokens * (_div(self.month_seconds, v.seconds) or 0.0)
        current = self.monthly_fixed_usd()
        rows = []
        for name, m in self.modes.items():
            monthly = self.monthly_fixed_usd(name)
            rows.append({
                "mode": name,
                "label": m.label,
                "latency_ms": m.latency_ms,
                "monthly_usd": monthly,
                "cost_per_day_usd": self.cost_per_day_usd(name),
                "cost_per_1k_tokens_usd": _div(monthly * 1000.0, monthly_tokens),
                "delta_vs_current_usd": monthly - current,
                "current": name == self.deployment,
            })
        return rows

    def api_comparison(self, v: Volume) -> list[dict[str, Any]]:
        """The same monthly token volume bought from hosted APIs."""
        scale = _div(self.month_seconds, v.seconds) or 0.0
        inp, out = v.input_tokens * scale, v.output_tokens * scale
        current = self.monthly_fixed_usd()
        rows = []
        for name, p in self.api_prices.items():
            monthly = p.cost_usd(inp, out)
            rows.append({
                "api": name,
                "input_per_mtok": p.input_per_mtok,
                "output_per_mtok": p.output_per_mtok,
                "monthly_usd": monthly,
                "cost_per_1k_tokens_usd": _div(monthly * 1000.0, inp + out),
                "delta_vs_current_usd": monthly - current,
            })
        return rows

    def break_even_monthly_tokens(self, api: str, input_share: float = 0.5) -> float | None:
        """Monthly token volume above which self-hosting is cheaper than ``api``."""
        p = self.api_prices[api]
        per_token = (input_share * p.input_per_mtok + (1 - input_share) * p.output_per_mtok) / 1e6
        return _div(self.monthly_fixed_usd(), per_token)

    # ------------------------------------------------------------------ scaling
    def scaling_delta(self, load: float | None) -> int:
        """The rule: load > high -> +scale_up instances, load < low -> -scale_down."""
        if load is None or not math.isfinite(load):
            return 0
        if load > self.scale_high:
            return self.scale_up
        if load < self.scale_low:
            return -self.scale_down
        return 0

    def recommended_instances(self, load: float | None, instances: int | None = None) -> int:
        n = self.instances if instances is None else instances
        target = n + self.scaling_delta(load)
        target = max(self.min_instances, target)
        if self.max_instances is not None:
            target = min(int(self.max_instances), target)
        return target

    def load_from_busy_seconds(self, busy_seconds: float, seconds: float, instances: int | None = None) -> float | None:
        """Load = average concurrent turns / serving capacity (instances x concurrency)."""
        n = self.instances if instances is None else instances
        return _div(busy_seconds, seconds * n * self.concurrency)

    # ------------------------------------------------------------------ budget
    def budget_usd(self) -> float:
        """The monthly budget: ``monthly_budget_usd``, or the deployment's monthly cost."""
        b = self.monthly_budget_usd
        return float(b) if b is not None else self.monthly_fixed_usd()


_LOADED: dict[tuple[str, float], CostModel] = {}
_LOAD_LOCK = threading.Lock()
_SCHEMA: dict[str, Any] | None = None


def load_schema() -> dict[str, Any]:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = json.loads(SCHEMA_PATH.read_text("utf-8"))
    return _SCHEMA


def default_cost_path() -> str | None:
    """``$SEEKWATCH_COST_CONFIG`` if set, else ``None`` (the shipped defaults)."""
    return os.environ.get("SEEKWATCH_COST_CONFIG") or None
