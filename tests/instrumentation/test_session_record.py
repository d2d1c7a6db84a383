"""build_session_record / build_feedback_record: schema-valid, ECS/GenAI shapes, and raw
PII from the corpus never appears in the serialised record."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import jsonschema
import pytest

from contracts.log_schema import CORE_FIELDS, validate_record
from contracts.metrics import STATUSES
from inference.session_log import serialise
from inference.session_record import (
    OUTCOMES, build_feedback_record, build_session_record, pseudonymise_id, rfc3339_ms,
)
from tests.instrumentation.pii_corpus import CASES, NEAR_MISSES, RAW_PII

ALL_TEXT = [t for t, _, _ in CASES]


def make(**kw):
    base = dict(session_id="abc123", request_id="chatcmpl-abc", turn_index=0, prompt="如何退货？",
                response="请访问...", model_version="deepseek-7b-v1.5", duration_s=0.128, ttft_s=0.04,
                status="completed", input_tokens=10, output_tokens=20, finish_reason="stop")
    base.update(kw)
    return build_session_record(**base)


def test_seed_fields_ecs_and_gen_ai():
    r = make(ended_at=datetime(2026, 11, 29, 3, 4, 5, 678901, tzinfo=timezone.utc), queue_s=0.002,
             request_model="deepseek-chat", temperature=0.3, max_tokens=200)
    validate_record(r)
    for f in CORE_FIELDS:
        assert f in r
    assert r["latency_ms"] == 128.0 and r["ttft_ms"] == 40.0 and r["queue_ms"] == 2.0
    assert r["@timestamp"] == "2026-11-29T03:04:05.678Z"
    assert r["event"] == {"dataset": "seekwatch.session", "kind": "event", "duration": 128_000_000,
                          "outcome": "success"}
    assert r["gen_ai"]["request"] == {"model": "deepseek-chat", "temperature": 0.3, "max_tokens": 200}
    assert r["gen_ai"]["usage"] == {"input_tokens": 10, "output_tokens": 20}
    assert r["gen_ai"]["response"]["finish_reasons"] == ["stop"]
    assert r["pii"] == {"redactions": {}, "total": 0}


@pytest.mark.parametrize("status", STATUSES)
def test_every_status_valid(status):
    r = make(status=status, ttft_s=None, finish_reason=None,
             error={"type": "server_error", "message": "boom", "code": 500} if status == "error" else None)
    validate_record(r)
    assert r["event"]["outcome"] == OUTCOMES[status]
    assert r["ttft_ms"] is None and r["gen_ai"]["response"]["finish_reasons"] == []


def test_bad_status_and_rating_raise():
    with pytest.raises(ValueError):
        make(status="ok")
    with pytest.raises(ValueError):
        build_feedback_record(rating="meh", request_id="chatcmpl-1")
    with pytest.raises(ValueError):
        build_feedback_record(rating="up")


def test_schema_rejects_broken_records():
    r = make()
    r["@timestamp"] = "2026-11-29 03:04:05"
    with pytest.raises(jsonschema.ValidationError):
        validate_record(r)
    r = make()
    del r["model_version"]
    with pytest.raises(jsonschema.ValidationError):
        validate_record(r)


def test_no_raw_pii_in_serialised_records():
    blob = []
    for text in ALL_TEXT:
        r = make(prompt=text, response="回复：" + text, reasoning="思考：" + text, user=text,
                 error={"type": "x", "message": text})
        validate_record(r)
        blob.append(serialise(r).decode())
        f = build_feedback_record(rating="down", request_id="chatcmpl-abc", session_id=text, comment=text)
        validate_record(f)
        blob.append(serialise(f).decode())
    joined = "\n".join(blob)
    for raw in RAW_PII:
        assert raw not in joined, raw


def test_redaction_counts_cover_all_fields():
    text = "手机13812345678"
    r = make(prompt=text, response=text, reasoning=text, user="a@b.cn")
    assert r["pii"] == {"redactions": {"phone": 3, "email": 1}, "total": 4}


def test_near_misses_survive_in_records():
    for text in NEAR_MISSES:
        r = make(prompt=text)
        assert r["prompt"] == text and r["pii"]["total"] == 0


def test_session_id_with_pii_becomes_stable_pseudonym():
    a = make(session_id="zhang.san@example.com")["session_id"]
    b = make(session_id="zhang.san@example.com")["session_id"]
    assert a == b and a.startswith("pii-") and "@" not in a
    assert pseudonymise_id("abc123") == "abc123"


def test_rfc3339_ms():
    assert rfc3339_ms(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339_ms(datetime(2026, 1, 2, 3, 4, 5, 999999)) == "2026-01-02T03:04:05.999Z"


def test_one_line_json_with_chinese_kept():
    r = make(prompt="第一行\n第二行", response="含有\"引号\"和\\反斜杠")
    line = serialise(r)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert "第一行".encode() in line
    assert json.loads(line) == r


def test_lone_surrogate_does_not_break_serialisation():
    r = make(response="bad \ud800 char")
    line = serialise(r)
    assert json.loads(line)["response"] == "bad \ud800 char"
