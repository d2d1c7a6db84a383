"""Loads the JSON Schemas of the session and feedback log records.

The schemas are data files beside this module (``session-record.schema.json``,
``feedback-record.schema.json``); the node validates against them in tests, the search
engine's index template is written from the same field list, and docs/log-schema.md
describes them.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

SESSION_DATASET = "seekwatch.session"
FEEDBACK_DATASET = "seekwatch.feedback"
ECS_VERSION = "8.11.0"

#: The five fields of the original session-log format, kept at the top level under their own
#: names so queries written for that format keep working.
CORE_FIELDS = ("session_id", "prompt", "response", "latency_ms", "model_version")


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    """Return the JSON Schema ``name`` (``"session"`` or ``"feedback"``)."""
    text = resources.files(__package__).joinpath(f"{name}-record.schema.json").read_text("utf-8")
    return json.loads(text)


def validator_for(record: dict[str, Any]):
    """A jsonschema validator for the dataset this record claims to belong to."""
    import jsonschema

    dataset = record.get("event", {}).get("dataset") if isinstance(record.get("event"), dict) else None
    schema = load_schema("feedback" if dataset == FEEDBACK_DATASET else "session")
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def validate_record(record: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``record`` breaks its schema."""
    validator_for(record).validate(record)


def is_turn_record(record: Any) -> bool:
    """Is this log record a chat turn (what costs, turns and latencies count)?

    A record of ``event.dataset`` ``seekwatch.session``, or an older record without a dataset
    that has a ``request_id`` and no ``rating``; either way with an ``@timestamp`` and a
    ``session_id``. The dashboard applies the same rule column-wise
    (``dashboards/data/jsonl.py``); NextChat's balance query applies it record by record.
    """
    if not isinstance(record, dict):
        return False
    event = record.get("event")
    dataset = event.get("dataset") if isinstance(event, dict) else None
    if dataset is None:
        turn = isinstance(record.get("request_id"), str) and record.get("rating") is None
    else:
        turn = dataset == SESSION_DATASET
    return turn and bool(record.get("@timestamp")) and isinstance(record.get("session_id"), str)
