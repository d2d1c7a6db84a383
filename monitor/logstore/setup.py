"""Install what the session logs need in the log store, idempotently:

1. the retention policy (ILM on Elasticsearch, ISM on OpenSearch; 180 days by default),
2. the ingest pipeline ``seekwatch-logs`` (timestamp parsing, a second PII-masking pass,
   field clean-up),
3. the composable index template ``seekwatch-logs`` for ``seekwatch-*`` (mappings for every
   log field, ``cjk`` analysis on prompt/response, data streams, default pipeline; on
   Elasticsearch also ``index.lifecycle.name``),
4. the data streams ``seekwatch-sessions`` and ``seekwatch-feedback`` (rollover is the
   retention policy's job: daily or at 50 GB per primary shard).

Each object carries a hash of its seekwatch asset (in ``_meta`` or its description); a
second run compares hashes and changes nothing. Assets are JSON files in ``assets/``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.logstore import (
    FEEDBACK_STREAM,
    PIPELINE,
    RETENTION_POLICY,
    SESSION_STREAM,
    TEMPLATE,
    StoreClient,
)

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_RETENTION_DAYS = 180
_HASH_RE = re.compile(r"\[seekwatch:([0-9a-f]{12})\]")


def load_asset(name: str) -> dict:
    return json.loads((ASSETS / name).read_text("utf-8"))


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]


def _tag(text: str, digest: str) -> str:
    return f"{_HASH_RE.sub('', text).rstrip()} [seekwatch:{digest}]"


def _found_hash(text: str | None) -> str | None:
    m = _HASH_RE.search(text or "")
    return m.group(1) if m else None


def retention_policy(api: str, days: int = DEFAULT_RETENTION_DAYS) -> dict:
    """The ILM or ISM policy body with ``days`` as the delete age."""
    if days < 1:
        raise ValueError("retention days must be >= 1")
    if api == "ilm":
        body = load_asset("ilm-policy.json")
        body["policy"]["phases"]["delete"]["min_age"] = f"{days}d"
        return body
    body = load_asset("ism-policy.json")
    for state in body["policy"]["states"]:
        for t in state.get("transitions", []):
            if t.get("state_name") == "delete":
                t["conditions"]["min_index_age"] = f"{days}d"
    return body


def index_template(api: str, policy: str | None, core_only: bool = False) -> dict:
    body = load_asset("index-template.json")
    if api == "ilm" and policy:
        body["template"]["settings"]["index"]["lifecycle"] = {"name": policy}
    if core_only:
        # Elasticsearch without its modules: no ingest pipeline to default to, and no
        # analysis-common (so no cjk analyzer): fall back to the standard analyzer.
        del body["template"]["settings"]["index"]["default_pipeline"]

        def walk(props: dict) -> None:
            for spec in props.values():
                if spec.get("analyzer") == "cjk":
                    spec["analyzer"] = "standard"
                walk(spec.get("properties", {}))

        walk(body["template"]["mappings"]["properties"])
    return body


@dataclass
class Report:
    store: str = ""
    actions: list[tuple[str, str]] = field(default_factory=list)  # (object, created|updated|unchanged|skipped: why)
    warnings: list[str] = field(default_factory=list)

    def add(self, what: str, outcome: str) -> None:
        self.actions.append((what, outcome))

    @property
    def changed(self) -> bool:
        return any(o in ("created", "updated") for _, o in self.actions)

    def lines(self) -> list[str]:
        out = [f"log store: {self.store}"]
        out += [f"{what}: {outcome}" for what, outcome in self.actions]
        out += [f"warning: {w}" for w in self.warnings]
        return out


def install(
    client: StoreClient,
    *,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    require_retention: bool = False,
) -> Report:
    info = client.info()
    api = info.retention_api
    report = Report(store=f"{info.distribution} {info.version}" + (" (core only)" if info.core_only else ""))

    # 1. retention policy
    policy_name: str | None = RETENTION_POLICY
    if client.retention_supported():
        body = retention_policy(api, retention_days)
        if api == "ilm":
            digest = _digest(body)
            body["policy"]["_meta"]["seekwatch_hash"] = digest
            existing = client.get_retention_policy(RETENTION_POLICY)
            have = ((existing or {}).get("policy", {}).get("_meta") or {}).get("seekwatch_hash")
        else:
            digest = _digest(body)
            body["policy"]["description"] = _tag(body["policy"]["description"], digest)
            existing = client.get_retention_policy(RETENTION_POLICY)
            have = _found_hash((existing or {}).get("policy", {}).get("description"))
        what = f"retention policy {RETENTION_POLICY} ({api.upper()}, delete after {retention_days}d)"
        if have == digest:
            report.add(what, "unchanged")
        else:
            client.put_retention_policy(RETENTION_POLICY, body, existing)
            report.add(what, "updated" if existing else "created")
    else:
        policy_name = None
        msg = (f"{api.upper()} is not available on this {info.distribution} "
               f"({'ISM plugin not installed' if api == 'ism' else 'no ILM'}): "
               f"the {retention_days}-day retention is NOT active; install the plugin, or run "
               f"`seekwatch es-retention --url URL --retention-days {retention_days}` daily")
        if require_retention:
            from contracts.config import ConfigError

            raise ConfigError(msg)
        report.add(f"retention policy {RETENTION_POLICY}", f"skipped: {api.upper()} unavailable")
        report.warnings.append(msg)

    if info.core_only:
        report.warnings.append(
            "core-only Elasticsearch (no modules, no x-pack): no ingest pipeline (no timestamp parsing, "
            "no second PII pass), standard analyzer instead of cjk, data streams created on first write; "
            "fit for smoke tests, not for production")
        report.add(f"ingest pipeline {PIPELINE}", "skipped: no ingest processors")
        template = index_template(api, None, core_only=True)
        _install_template(client, template, report)
        for stream in (SESSION_STREAM, FEEDBACK_STREAM):
            report.add(f"data stream {stream}", "skipped: created on first write")
        return report

    # 2. ingest pipeline
    pipeline = load_asset("ingest-pipeline.json")
    digest = _digest(pipeline)
    pipeline["description"] = _tag(pipeline["description"], digest)
    existing_p = client.get_pipeline(PIPELINE)
    if _found_hash((existing_p or {}).get("description")) == digest:
        report.add(f"ingest pipeline {PIPELINE}", "unchanged")
    else:
        client.put_pipeline(PIPELINE, pipeline)
        report.add(f"ingest pipeline {PIPELINE}", "updated" if existing_p else "created")

    # 3. index template
    _install_template(client, index_template(api, policy_name), report)

    # 4. data streams
    for stream in (SESSION_STREAM, FEEDBACK_STREAM):
        if client.data_stream_exists(stream):
            report.add(f"data stream {stream}", "unchanged")
        else:
            client.create_data_stream(stream)
            report.add(f"data stream {stream}", "created")
    return report


def _install_template(client: StoreClient, template: dict, report: Report) -> None:
    digest = _digest(template)
    template["_meta"]["seekwatch_hash"] = digest
    existing_t = client.get_index_template(TEMPLATE)
    if ((existing_t or {}).get("_meta") or {}).get("seekwatch_hash") == digest:
        report.add(f"index template {TEMPLATE}", "unchanged")
    else:
        client.put_index_template(TEMPLATE, template)
        report.add(f"index template {TEMPLATE}", "updated" if existing_t else "created")
        if existing_t:
            report.warnings.append("the new template applies to the next backing index (after rollover)")


def template_field_paths(template: dict | None = None) -> set[str]:
    """Dotted paths of every field the template maps explicitly (for tests and docs)."""
    props = copy.deepcopy((template or load_asset("index-template.json"))["template"]["mappings"]["properties"])
    out: set[str] = set()

    def walk(p: dict, prefix: str) -> None:
        for name, spec in p.items():
            path = f"{prefix}{name}"
            if "properties" in spec:
                walk(spec["properties"], path + ".")
            else:
                out.add(path)

    walk(props, "")
    return out
