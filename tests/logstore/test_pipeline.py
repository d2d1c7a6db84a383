"""The ingest pipeline: a second PII-masking pass catches what slipped past the node's masker,
timestamps are parsed, raw lines are parsed, shipper metadata is cleaned up."""
from __future__ import annotations

import random


from tests.logstore.conftest import run_ship
from tests.logstore.gen import append_lines, feedback_record, session_record

PLANTED = ("我的手机号是13812345678，也可以打+86 139-1234-5678，邮箱 zhang.san@example.com，"
           "身份证11010519491231002X，卡号6222 0212 3456 7890，服务器192.168.1.20，"
           "key sk-abcdefghijklmnop1234 和 Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc.def")
SECRETS = ["13812345678", "139-1234-5678", "zhang.san@example.com", "11010519491231002X",
           "6222 0212 3456 7890", "192.168.1.20", "sk-abcdefghijklmnop1234", "eyJhbGciOiJIUzI1NiJ9"]


def simulate(store, docs: list[dict]) -> list[dict]:
    body = {"docs": [{"_source": d} for d in docs]}
    out = store.request("POST", "/_ingest/pipeline/seekwatch-logs/_simulate", body)["docs"]
    return [d["doc"]["_source"] for d in out]


def test_planted_pii_is_masked_in_indexed_documents(tmp_path, store, log_store_url):
    rng = random.Random(5)
    rec = session_record(1, rng, prompt=PLANTED, tag="pii")
    rec["response"] = "已记录 13812345678 与 zhang.san@example.com"
    fb = feedback_record(1, rec["request_id"], rec["session_id"], "down", comment="请打给我 13812345678")
    fb["feedback_id"] = "fb-pii00000001"
    fb["host"]["name"] = "node-pii"
    append_lines(tmp_path / "session.jsonl", [rec, fb])
    summary = run_ship(tmp_path, log_store_url)
    assert summary["shipped"] == 2, summary
    store.refresh()
    doc = store.search("seekwatch-sessions", {"query": {"term": {"request_id": rec["request_id"]}}})["hits"]["hits"][0]["_source"]
    for secret in SECRETS:
        assert secret not in doc["prompt"], (secret, doc["prompt"])
    for token in ("[PHONE]", "[EMAIL]", "[ID]", "[CARD]", "[IP]", "[SECRET]"):
        assert token in doc["prompt"], (token, doc["prompt"])
    assert doc["prompt"].count("[PHONE]") == 2
    assert doc["response"] == "已记录 [PHONE] 与 [EMAIL]"
    fdoc = store.search("seekwatch-feedback", {"query": {"term": {"feedback_id": "fb-pii00000001"}}})["hits"]["hits"][0]["_source"]
    assert fdoc["comment"] == "请打给我 [PHONE]"
    # the masked text is still searchable in Chinese (cjk bigrams)
    hits = store.search("seekwatch-sessions", {"query": {"bool": {"filter": [{"term": {"host.name": "node-pii"}}],
                                                                   "must": [{"match_phrase": {"prompt": "手机号"}}]}}})
    assert hits["hits"]["total"]["value"] == 1


def test_masking_is_idempotent_and_leaves_near_misses(store):
    already = "电话 [PHONE]，邮箱 [EMAIL]"
    near = "订单号 20261128 数量 12 版本 1.2.3 温度 0.7 时间 2026-11-28 08:00:00"
    out = simulate(store, [{"@timestamp": "2026-11-28T08:00:00Z", "prompt": already, "response": near}])[0]
    assert out["prompt"] == already
    assert out["response"] == near


def test_timestamps_raw_lines_and_cleanup(store):
    docs = [
        {"@timestamp": 1764316800123, "request_id": "chatcmpl-t1", "session_id": "s"},
        {"@timestamp": "2026-11-28 08:00:00", "request_id": "chatcmpl-t2", "session_id": "s"},
        # Filebeat without a JSON parser: the record arrives as the raw line in `message`
        {"message": '{"@timestamp":"2026-11-28T08:00:00.000Z","request_id":"chatcmpl-t3","session_id":"s",'
                    '"prompt":"mail me at a@b.cn"}',
         "agent": {"type": "filebeat"}, "input": {"type": "filestream"}, "log": {"offset": 42}, "@version": "1"},
    ]
    out = simulate(store, docs)
    assert out[0]["@timestamp"].startswith("2025-11-28T08:00:00.123")
    assert out[1]["@timestamp"].startswith("2026-11-28T08:00:00.000")
    assert out[2]["request_id"] == "chatcmpl-t3" and out[2]["prompt"] == "mail me at [EMAIL]"
    for gone in ("message", "agent", "input", "log", "@version"):
        assert gone not in out[2], gone
    assert all("ingested" in d["event"] for d in out)


def test_pipeline_failure_keeps_the_document_and_says_why(store):
    out = simulate(store, [{"@timestamp": "not a date", "request_id": "chatcmpl-bad", "session_id": "s"}])[0]
    assert out["event"]["kind"] == "pipeline_error"
    assert "not a date" in out["pipeline_error"]["message"] or "unable to parse" in out["pipeline_error"]["message"].lower()
