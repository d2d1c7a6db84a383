"""Bad input: deeply nested JSON bodies on every JSON endpoint of the node. Each must get a clear
400 (or 413 when over the size limit) in OpenAI's error shape, never a 5xx or a crash, and the
node keeps serving. (This suite found the node answering 500 to bodies nested past Python's
recursion limit — ``RecursionError`` from ``json.loads`` — fixed in 42519d4.)

(Oversized bodies with and without Content-Length, and invalid UTF-8, are in
tests/node/test_errors.py: ``test_body_over_limit_is_413_with_and_without_content_length``,
``test_bad_requests_get_400``.)
"""
from __future__ import annotations

import httpx
import pytest

DEPTH = 100_000
ENDPOINTS = ["/v1/chat/completions", "/chat/completions", "/chat", "/v1/feedback"]
BODIES = {
    "open-brackets": b"[" * DEPTH,
    "balanced-brackets": b"[" * DEPTH + b"]" * DEPTH,
    "nested-objects": b'{"a":' * DEPTH + b"1" + b"}" * DEPTH,
    "deep-messages": (b'{"model":"deepseek-chat","messages":' + b"[" * DEPTH + b"]" * DEPTH + b"}"),
    "deep-content": (b'{"model":"deepseek-chat","messages":[{"role":"user","content":'
                     + b'{"x":' * DEPTH + b"1" + b"}" * DEPTH + b"}]}"),
    "deep-stop": (b'{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}],"stop":'
                  + b"[" * DEPTH + b"]" * DEPTH + b"}"),
    # below Python's recursion limit: parses, then must fail validation cleanly
    "moderate-content": (b'{"model":"deepseek-chat","request_id":"x","rating":"up","prompt":' + b"[" * 900
                         + b"]" * 900 + b',"messages":[{"role":"user","content":' + b'{"x":' * 900 + b"1"
                         + b"}" * 900 + b"}]}"),
}


def assert_clear_error(r: httpx.Response, statuses=(400, 413)) -> dict:
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    err = r.json()["error"]
    assert {"message", "type", "code"} <= set(err)
    assert isinstance(err["message"], str) and len(err["message"]) > 10
    return err


CASES = [(k, "/v1/chat/completions") for k in BODIES] + [("open-brackets", e) for e in ENDPOINTS[1:]] \
    + [("moderate-content", e) for e in ENDPOINTS]


@pytest.mark.parametrize("kind, endpoint", CASES)
def test_deeply_nested_body_is_a_clear_400(node, endpoint, kind):
    r = httpx.post(node.base_url + endpoint, content=BODIES[kind],
                   headers={"content-type": "application/json"}, timeout=60)
    assert node.proc.poll() is None                   # never a crash
    assert_clear_error(r)


def test_deeply_nested_body_over_the_size_limit_is_413(node):
    body = b"[" * (5 * 1024 * 1024)      # over the default 4 MiB
    r = httpx.post(node.base_url + "/v1/chat/completions", content=body,
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413, r.text[:300]
    assert r.json()["error"]["code"] == "request_too_large"


def test_node_keeps_serving_after_nested_bodies(node):
    for body in BODIES.values():
        httpx.post(node.base_url + "/v1/chat/completions", content=body, timeout=60)
    r = httpx.post(node.base_url + "/v1/chat/completions", timeout=60,
                   json={"model": "deepseek-chat", "max_tokens": 2, "messages": [{"role": "user", "content": "你好"}]})
    assert r.status_code == 200
    assert httpx.get(node.base_url + "/healthz", timeout=10).status_code == 200
    assert node.proc.poll() is None
