"""Refused requests leave a trace: a 401 is a record (without text) and a metric, the model
list needs the key, and a prompt refused as too long keeps the token count the node took."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from contracts.log_schema import validate_record
from tests.fixtures.metrics import node_metric
from tests.fixtures.node import start_node

KEY = "sk-test-key"
CHAT = "/chat/completions"  # NextChat's DeepSeek provider posts here


@pytest.fixture(scope="module")
def keyed_node(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keyed")
    (tmp / "keys.txt").write_text(KEY + "\n")
    n = start_node(tmp, "--model", str(tiny_model_dir), "--api-key-file", str(tmp / "keys.txt"),
                   "--max-model-len", "64")
    yield n
    n.stop()


def _records(n, wait_for: int, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        recs = [json.loads(ln) for f in sorted(n.log_dir.glob("*.jsonl"))
                for ln in f.read_text("utf-8").splitlines() if ln.strip()]
        if len(recs) >= wait_for or time.monotonic() > deadline:
            return recs
        time.sleep(0.1)


_metric = node_metric


def test_wrong_keys_are_records_and_metrics(keyed_node):
    n = keyed_node
    before = len(_records(n, 0, 0))
    secret = "my secret question about 4111 1111 1111 1111"
    bad = [("Bearer sk-wrong", {"model": "deepseek-chat", "messages": [{"role": "user", "content": secret}]}),
           ("", {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}),
           ("Bearer sk-wrong", b"not json at all")]
    paths = [CHAT, CHAT, CHAT, "/chat", CHAT]
    bad.append(("Bearer sk-wrong", {"prompt": "a question to the minimal endpoint"}))
    # a body over 256 KiB is not parsed for an unknown caller: "other"
    bad.append(("Bearer sk-wrong", {"model": "deepseek-chat", "messages": [{"role": "user", "content": "x" * 300_000}]}))
    for path, (auth, body) in zip(paths, bad):
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = httpx.post(n.base_url + path, headers={"Authorization": auth}, timeout=30, **kw)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert "X-Session-Id" not in r.headers
    recs = _records(n, before + 5)[before:]
    assert len(recs) == 5
    for rec in recs:
        validate_record(rec)
        assert rec["status"] == "rejected" and rec["error"]["code"] == "invalid_api_key"
        assert rec["prompt"] == "" and rec["response"] == ""  # nothing of an unknown caller is kept
        assert rec["gen_ai"]["usage"] == {"input_tokens": 0, "output_tokens": 0} and rec["cost_usd"] == 0
    assert [r["request_kind"] for r in recs] == ["chat", "chat", "other", "chat", "other"]
    assert secret not in json.dumps(recs)
    assert _metric(n, "seekwatch_auth_failures_total", {}) == 5
    assert _metric(n, "seekwatch_requests_total", {"status": "rejected", "request_kind": "chat"}) == 3
    assert _metric(n, "seekwatch_requests_total", {"status": "rejected", "request_kind": "other"}) == 2


def test_the_model_list_needs_the_key_when_keys_are_configured(keyed_node):
    n = keyed_node
    before = len(_records(n, 0, 0))
    assert httpx.get(n.base_url + "/v1/models", timeout=10).status_code == 401
    rec = _records(n, before + 1)[before]  # refused like a chat request, recorded as "other"
    assert (rec["endpoint"], rec["request_kind"], rec["session_id"], rec["status"]) == (
        "/v1/models", "other", "unauthenticated", "rejected")
    r = httpx.get(n.base_url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert r.status_code == 200 and "deepseek-chat" in [m["id"] for m in r.json()["data"]]
    # the probes and /metrics stay open (Kubernetes and Prometheus), unless --auth-probes
    assert httpx.get(n.base_url + "/readyz", timeout=10).status_code == 200
    assert httpx.get(n.base_url + "/metrics", timeout=10).status_code == 200


def test_a_prompt_refused_as_too_long_keeps_its_token_count(keyed_node):
    n = keyed_node
    before = len(_records(n, 0, 0))
    r = httpx.post(n.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=30,
                   json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "订单 " * 80}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    counted = int(r.json()["error"]["message"].split("take ")[1].split(" tokens")[0])
    rec = _records(n, before + 1)[-1]
    assert rec["status"] == "rejected" and rec["gen_ai"]["usage"]["input_tokens"] == counted > 64
    assert rec["cost_usd"] == 0  # the model never ran it


def test_serve_help_says_instrumentation_is_on_by_default():
    out = subprocess.run([sys.executable, "-m", "seekwatch", "serve", "--help"], capture_output=True,
                         text=True, check=True).stdout
    block = out[out.index("--no-instrumentation  "):].split("\n  --")[0]
    assert "on by default" in " ".join(block.split()) and "default: True" not in block
