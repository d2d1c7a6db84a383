"""alertd's config: YAML checked against ``config.schema.json``, merged over the defaults.

A user file only names what it changes; every other key comes from
``contracts/defaults/alerts.yaml``. Rules merge key by key, ``receivers`` replaces the list.
Any problem raises :class:`contracts.config.ConfigError` with one line naming the file and
the key, which the CLI prints before exiting with status 2.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from contracts.config import ConfigError, load_yaml_config
from contracts.defaults import default_config_path

from .durations import parse_duration
from .rules import RULE_NAMES

SCHEMA_PATH = Path(__file__).with_name("config.schema.json")
_DURATION_KEYS = ("for", "window")


def load_schema() -> dict[str, Any]:
    """``config.schema.json`` with each receiver's own keys merged into ``receivers.items``:
    a receiver module owns its schema fragment (:mod:`monitor.alerting.receivers`)."""
    from .receivers import config_schema

    schema = json.loads(SCHEMA_PATH.read_text("utf-8"))
    recv = schema["properties"]["receivers"]
    recv["items"] = config_schema(recv["items"])
    return schema


def check_schema(data: Any, schema: dict[str, Any], source: str) -> None:
    """Like ``contracts.config.check_against_schema`` but words ``oneOf`` failures (durations,
    URLs, null-or-X) with the schema's description instead of jsonschema's generic text."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return
    err = errors[0]
    where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    msg = err.message
    if err.validator == "oneOf":
        desc = err.schema.get("description")
        if not desc:
            for sub in err.schema.get("oneOf", []):
                ref = sub.get("$ref", "")
                if ref.startswith("#/$defs/"):
                    desc = schema["$defs"][ref.split("/")[-1]].get("description")
                    if ref.endswith("url"):
                        desc = "null or an http(s) URL"
                    if desc:
                        break
        if desc:
            msg = f"{err.instance!r} is not valid: expected {desc}"
    raise ConfigError(f"{source}: {where}: {msg}")


def node_id(url: str) -> str:
    """The node's name in alerts: ``host:port`` of its metrics URL, like Prometheus' ``instance``."""
    parts = urlsplit(url)
    if parts.port is None:
        return f"{parts.hostname}:{443 if parts.scheme == 'https' else 80}"
    return parts.netloc.rsplit("@", 1)[-1]


@dataclass
class AlertdConfig:
    source: str
    nodes: list[str]
    prometheus_url: str | None
    prometheus_job: str
    evaluation_interval: float
    scrape_timeout: float
    state_path: Path
    dashboard_url: str | None
    group_by: list[str]
    repeat_interval: float
    send_resolved: bool
    metrics_listen: str | None
    rules: dict[str, dict[str, Any]]
    receivers: list[dict[str, Any]]
    delivery: dict[str, float]
    history_retention: float = 30 * 86400.0
    scrape_headers: dict[str, str] = field(default_factory=dict)
    scrape_tls: dict[str, Any] = field(default_factory=dict)
    alertmanager_listen: str | None = None

    def ssl_context(self):
        """SSL context for https nodes / Prometheus: system CAs, or ``scrape_tls.ca_file``."""
        import ssl

        ctx = ssl.create_default_context(cafile=self.scrape_tls.get("ca_file"))
        if self.scrape_tls.get("insecure_skip_verify"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def mode(self) -> str:
        return "promql" if self.prometheus_url else "scrape"

    def rule(self, name: str) -> dict[str, Any] | None:
        r = self.rules.get(name)
        return r if r and r.get("enabled", True) else None

    def history_seconds(self) -> float:
        """How far back the direct-scrape source must remember samples."""
        spans = [self.evaluation_interval * 2]
        for r in self.rules.values():
            spans += [r.get("window", 0.0), r.get("for", 0.0)]
        return max(spans)

    def summary(self) -> str:
        rules = ", ".join(n for n in RULE_NAMES if self.rule(n))
        where = self.prometheus_url if self.prometheus_url else f"{len(self.nodes)} node(s) by direct scrape"
        recv = ", ".join(r.get("name") or r["type"] for r in self.receivers) or "none"
        return f"source: {where}; rules: {rules}; receivers: {recv}; state: {self.state_path}"


def _merge(defaults: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    for key, value in user.items():
        if key == "rules" and isinstance(value, dict):
            rules = {k: dict(v) for k, v in defaults.get("rules", {}).items()}
            for name, rule in value.items():
                rules[name] = {**rules.get(name, {}), **(rule or {})}
            out["rules"] = rules
        elif key == "delivery" and isinstance(value, dict):
            out["delivery"] = {**defaults.get("delivery", {}), **value}
        else:
            out[key] = value
    return out


def _dur(value: Any, where: str, source: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: {where}: {exc}") from None


def build_config(data: dict[str, Any], source: str) -> AlertdConfig:
    """Check semantics the schema cannot express and normalise durations to seconds."""
    ev = _dur(data["evaluation_interval"], "evaluation_interval", source)
    rules: dict[str, dict[str, Any]] = {}
    for name, rule in data.get("rules", {}).items():
        r = dict(rule)
        for k in _DURATION_KEYS:
            if k in r:
                r[k] = _dur(r[k], f"rules.{name}.{k}", source)
        r.setdefault("for", 0.0)
        rules[name] = r
    for name in ("p99_latency", "p99_e2e_latency"):
        p99 = rules.get(name)
        if p99 and p99.get("enabled", True) and not data.get("prometheus_url") and p99["window"] < 2 * ev:
            raise ConfigError(
                f"{source}: rules.{name}.window: {rule_str(data, name, 'window')} is shorter than "
                f"two evaluation intervals ({data['evaluation_interval']}); the window needs two scrapes")
    for name in ("completion_rate", "turn_completion"):
        comp = rules.get(name)
        if comp and comp.get("enabled", True) and not data.get("prometheus_url") and comp["window"] < 2 * ev:
            raise ConfigError(f"{source}: rules.{name}.window: shorter than two evaluation intervals")
    sc = rules.get("scaling")
    if sc and sc["low"] >= sc["high"]:
        raise ConfigError(f"{source}: rules.scaling: low ({sc['low']}) must be below high ({sc['high']})")
    receivers = list(data.get("receivers") or [])
    names: set[str] = set()
    for i, rc in enumerate(receivers):
        rc = dict(rc)
        rc.setdefault("name", f"{rc['type']}-{i}")
        if rc["name"] in names:
            raise ConfigError(f"{source}: receivers.{i}.name: duplicate receiver name {rc['name']!r}")
        names.add(rc["name"])
        receivers[i] = rc
    delivery = {k: (_dur(v, f"delivery.{k}", source) if k != "max_attempts" else int(v))
                for k, v in data.get("delivery", {}).items()}
    if data.get("prometheus_url") is None and not data.get("nodes"):
        raise ConfigError(f"{source}: nodes: give at least one node metrics URL, or set prometheus_url")
    return AlertdConfig(
        source=source,
        nodes=list(data.get("nodes") or []),
        prometheus_url=(data.get("prometheus_url") or None) and data["prometheus_url"].rstrip("/"),
        prometheus_job=data.get("prometheus_job", "seekwatch"),
        evaluation_interval=ev,
        scrape_timeout=_dur(data.get("scrape_timeout", "5s"), "scrape_timeout", source),
        state_path=Path(data["state_path"]).expanduser(),
        dashboard_url=data.get("dashboard_url"),
        group_by=list(data.get("group_by") or ["rule", "node", "gpu"]),
        repeat_interval=_dur(data["repeat_interval"], "repeat_interval", source),
        send_resolved=bool(data.get("send_resolved", True)),
        metrics_listen=data.get("metrics_listen"),
        rules=rules,
        receivers=receivers,
        delivery=delivery,
        history_retention=_dur(data.get("history_retention", "30d"), "history_retention", source),
        scrape_headers={k: _expand(v, f"scrape_headers.{k}", source) for k, v in (data.get("scrape_headers") or {}).items()},
        scrape_tls=_tls(data.get("scrape_tls") or {}, source),
        alertmanager_listen=data.get("alertmanager_listen"),
        raw=data,
    )


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: str, where: str, source: str) -> str:
    """``${VAR}`` from the environment, so secrets need not sit in the file."""
    def sub(m: re.Match) -> str:
        if m.group(1) not in os.environ:
            raise ConfigError(f"{source}: {where}: environment variable {m.group(1)} is not set")
        return os.environ[m.group(1)]

    return _VAR.sub(sub, value)


def _tls(tls: dict[str, Any], source: str) -> dict[str, Any]:
    ca = tls.get("ca_file")
    if ca and not Path(ca).expanduser().is_file():
        raise ConfigError(f"{source}: scrape_tls.ca_file: no such file {ca!r}")
    return {**tls, **({"ca_file": str(Path(ca).expanduser())} if ca else {})}


def rule_str(data: dict[str, Any], rule: str, key: str) -> str:
    return str(data.get("rules", {}).get(rule, {}).get(key))


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> AlertdConfig:
    """Load ``path`` (or only the defaults when None) and return the effective config."""
    schema = load_schema()
    default_path = default_config_path("alerts")
    defaults = load_yaml_config(default_path) or {}
    check_schema(defaults, schema, str(default_path))
    if path is None:
        data, source = defaults, str(default_path)
    else:
        user = load_yaml_config(path)
        check_schema(user, schema, str(path))
        if user is None:
            user = {}
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: (top level): expected a mapping of keys")
        data, source = _merge(defaults, user), str(path)
    if overrides:
        data = _merge(data, overrides)
        check_schema(data, schema, source)
    return build_config(data, source)
