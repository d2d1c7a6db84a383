"""Build schema-valid session and feedback log records, masking PII on the way in.

Why a builder instead of dict literals in the request handler: every text field that can
carry user data (prompt, response, reasoning, user, error message, feedback comment) goes
through :mod:`contracts.pii` *here*, so there is no code path that produces a record with
unmasked text, and the field names live in one place next to the JSON Schema
(``contracts/session-record.schema.json``). The per-kind counts land in
``pii.redactions`` so the node can feed ``seekwatch_pii_redactions_total`` from the record.

A session id is not masked to a placeholder (that would merge every conversation into
one); when it contains PII (e.g. NextChat's ``user`` set to an e-mail address) it is
replaced by a stable pseudonym ``pii-<sha256 prefix>``, which still groups the turns.
"""
from __future__ import annotations

import hashlib
import socket
import uuid
from datetime import datetime, timezone
from typing import Any, Mapping

from contracts.log_schema import ECS_VERSION, FEEDBACK_DATASET, SESSION_DATASET
from contracts.metrics import DEFAULT_REQUEST_KIND, FEEDBACK_RATINGS, REQUEST_KINDS, STATUSES
from contracts.pii import DEFAULT_MASKER, PiiMasker, merge_counts

SERVICE_NAME = "seekwatch-node"
_HOST = socket.gethostname() or "localhost"

#: ECS event.outcome per turn status: did the node do its job for this request?
OUTCOMES: dict[str, str] = {
    "completed": "success",
    "truncated": "success",   # served; the client's max_tokens cut it
    "refused": "success",     # served; the model declined (a quality signal, not a failure)
    "error": "failure",
    "rejected": "failure",    # 4xx / 429 / not ready: never reached the model
    "aborted": "unknown",     # the client went away
}


def rfc3339_ms(ts: datetime | float | None = None) -> str:
    """``2026-11-29T01:53:32.123Z``: UTC, milliseconds, the form ES date fields index."""
    if ts is None:
        dt = datetime.now(timezone.utc)
    elif isinstance(ts, datetime):
        dt = ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
        dt = dt.astimezone(timezone.utc)
    else:
        dt = datetime.fromtimestamp(float(ts), timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def pseudonymise_id(value: str, masker: PiiMasker = DEFAULT_MASKER) -> str:
    """Keep an id as is unless it carries PII; then a stable ``pii-<hash>`` pseudonym."""
    if not value:
        return value
    if masker.mask(value).counts:
        return "pii-" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:24]
    return value


def _pii_block(counts: Mapping[str, int]) -> dict[str, Any]:
    c = {k: int(v) for k, v in counts.items() if v}
    return {"redactions": c, "total": sum(c.values())}


def build_session_record(
    *,
    session_id: str,
    request_id: str,
    turn_index: int,
    prompt: str,
    response: str,
    model_version: str,
    duration_s: float,
    ttft_s: float | None,
    status: str,
    input_tokens: int,
    output_tokens: int,
    cost_usd: float = 0.0,
    finish_reason: str | None = None,
    queue_s: float | None = None,
    reasoning: str | None = None,
    user: str | None = None,
    request_model: str | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    stream: bool | None = None,
    endpoint: str | None = None,
    error: Mapping[str, Any] | None = None,
    ended_at: datetime | float | None = None,
    request_kind: str = DEFAULT_REQUEST_KIND,
    service_name: str = SERVICE_NAME,
    service_version: str | None = None,
    host_name: str | None = None,
    system: str = "deepseek",
    masker: PiiMasker = DEFAULT_MASKER,
) -> dict[str, Any]:
    """Assemble one ``seekwatch.session`` record (one chat turn), PII-masked.

    ``duration_s`` is end-to-end (request received → last byte), ``ttft_s`` None when no
    token was produced. ``prompt`` is the last user message (not the whole history).
    ``ended_at`` defaults to now; it becomes ``@timestamp``. ``request_kind`` says whether the
    record is the user's turn (``chat``) or a client's background request. Raises ValueError for a status outside
    ``contracts.metrics.STATUSES`` or a kind outside ``REQUEST_KINDS``.
    """
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    if request_kind not in REQUEST_KINDS:
        raise ValueError(f"unknown request kind {request_kind!r}")
    p = masker.mask(prompt)
    r = masker.mask(response)
    parts = [p.counts, r.counts]
    rec: dict[str, Any] = {
        "@timestamp": rfc3339_ms(ended_at),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "dataset": SESSION_DATASET,
            "kind": "event",
            "duration": max(0, int(round(duration_s * 1e9))),
            "outcome": OUTCOMES[status],
        },
        "service": {"name": service_name},
        "host": {"name": host_name or _HOST},
        # the five fields of the original log format, under their own names
        "session_id": pseudonymise_id(session_id, masker),
        "prompt": p.text,
        "response": r.text,
        "latency_ms": round(max(0.0, duration_s) * 1000.0, 3),
        "model_version": model_version,
        # ours
        "request_id": request_id,
        "request_kind": request_kind,
        "turn_index": int(turn_index),
        "ttft_ms": None if ttft_s is None else round(max(0.0, ttft_s) * 1000.0, 3),
        "status": status,
        "cost_usd": max(0.0, float(cost_usd)),
        "gen_ai": {
            "system": system,
            "request": {"model": request_model or model_version},
            "usage": {"input_tokens": int(input_tokens), "output_tokens": int(output_tokens)},
            "response": {
                "id": request_id,
                "model": model_version,
                "finish_reasons": [finish_reason] if finish_reason else [],
            },
        },
    }
    if service_version:
        rec["service"]["version"] = service_version
    req = rec["gen_ai"]["request"]
    if temperature is not None:
        req["temperature"] = float(temperature)
    if top_p is not None:
        req["top_p"] = float(top_p)
    if max_tokens is not None:
        req["max_tokens"] = int(max_tokens)
    if queue_s is not None:
        rec["queue_ms"] = round(max(0.0, queue_s) * 1000.0, 3)
    if reasoning:
        m = masker.mask(reasoning)
        rec["reasoning"] = m.text
        parts.append(m.counts)
    if user:
        m = masker.mask(user)
        rec["user"] = m.text
        parts.append(m.counts)
    if stream is not None:
        rec["stream"] = bool(stream)
    if endpoint:
        rec["endpoint"] = endpoint
    if error:
        msg = masker.mask(str(error.get("message", "")))
        parts.append(msg.counts)
        code = error.get("code")
        rec["error"] = {
            "type": str(error.get("type", "error")),
            "message": msg.text,
            "code": None if code is None else str(code),
        }
    rec["pii"] = _pii_block(merge_counts(*parts))
    return rec


def new_feedback_id() -> str:
    return "fb-" + uuid.uuid4().hex


def build_feedback_record(
    *,
    rating: str,
    request_id: str | None = None,
    session_id: str | None = None,
    comment: str | None = None,
    feedback_id: str | None = None,
    at: datetime | float | None = None,
    service_name: str = SERVICE_NAME,
    host_name: str | None = None,
    masker: PiiMasker = DEFAULT_MASKER,
) -> dict[str, Any]:
    """Assemble one ``seekwatch.feedback`` record (``POST /v1/feedback``), comment masked.

    Joined to its turn by ``request_id`` (or to a conversation by ``session_id``; at least
    one is required). ``feedback_id`` is the log-store document id, so a re-sent
    record never duplicates; pass the client's idempotency key if it has one.
    """
    if rating not in FEEDBACK_RATINGS:
        raise ValueError(f"unknown rating {rating!r}")
    if not request_id and not session_id:
        raise ValueError("feedback needs a request_id or a session_id")
    rec: dict[str, Any] = {
        "@timestamp": rfc3339_ms(at),
        "ecs": {"version": ECS_VERSION},
        "event": {"dataset": FEEDBACK_DATASET, "kind": "event"},
        "service": {"name": service_name},
        "host": {"name": host_name or _HOST},
        "feedback_id": feedback_id or new_feedback_id(),
        "request_id": request_id or None,
        "session_id": pseudonymise_id(session_id, masker) if session_id else None,
        "rating": rating,
    }
    counts: dict[str, int] = {}
    if comment:
        m = masker.mask(comment)
        rec["comment"] = m.text
        counts = m.counts
    rec["pii"] = _pii_block(counts)
    return rec
