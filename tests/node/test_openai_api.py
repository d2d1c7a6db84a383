"""The node through the official ``openai`` client: text, usage, finish_reason, streaming."""
from __future__ import annotations

import httpx
import openai
import pytest


@pytest.fixture
def client(node):
    return openai.OpenAI(base_url=node.openai_base, api_key="unused", max_retries=0)


def _ask(client, stream: bool, max_tokens: int = 12):
    return client.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "如何退货？ How do I return an item?"}],
        temperature=0, max_tokens=max_tokens, stream=stream, extra_body={"ignore_eos": True},
        **({"stream_options": {"include_usage": True}} if stream else {}),
    )


def test_non_stream_returns_text_usage_and_finish_reason(client):
    resp = _ask(client, stream=False)
    choice = resp.choices[0]
    assert resp.id.startswith("chatcmpl-")
    assert resp.object == "chat.completion"
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason == "length"
    assert resp.usage.completion_tokens == 12
    assert resp.usage.prompt_tokens > 5
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 12


def test_stream_matches_non_stream_and_reports_usage(client):
    whole = _ask(client, stream=False).choices[0].message.content
    chunks = list(_ask(client, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole  # greedy decoding: streaming and non-streaming agree
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    assert usage_chunks[0].usage.completion_tokens == 12


def test_stream_is_byte_compatible_with_openai_sse(node):
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", node.openai_base + "/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"].startswith("chatcmpl-")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])


def test_stop_string_cuts_the_reply(client):
    whole = _ask(client, stream=False, max_tokens=30).choices[0].message.content
    stop = whole[len(whole) // 2: len(whole) // 2 + 2]
    if not stop.strip("\ufffd"):
        pytest.fail("generated text unsuitable for a stop string")
    resp = client.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "如何退货？ How do I return an item?"}],
        temperature=0, max_tokens=30, stop=[stop], extra_body={"ignore_eos": True})
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.content == whole[: whole.index(stop)]


def test_sampling_settings_are_honoured_per_request(client):
    """Penalties, top_p and temperature are accepted and min_tokens forces a length."""
    resp = client.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "system", "content": "You are a support agent."},
                                         {"role": "user", "content": "order status?"}],
        temperature=1.3, top_p=0.8, presence_penalty=1.0, frequency_penalty=0.5, max_tokens=8,
        user="someone", extra_body={"min_tokens": 8})
    assert resp.usage.completion_tokens == 8


def test_models_lists_aliases_including_deepseek_chat(client):
    ids = [m.id for m in client.models.list().data]
    assert "deepseek-chat" in ids and "tiny-deepseek" in ids


def test_request_and_session_ids(node):
    msgs = [{"role": "system", "content": "support"}, {"role": "user", "content": "第一个问题"}]
    r1 = httpx.post(node.openai_base + "/chat/completions", timeout=60,
                    json={"model": "deepseek-chat", "messages": msgs, "max_tokens": 2})
    msgs2 = msgs + [{"role": "assistant", "content": r1.json()["choices"][0]["message"]["content"]},
                    {"role": "user", "content": "第二个问题"}]
    r2 = httpx.post(node.openai_base + "/chat/completions", timeout=60,
                    json={"model": "deepseek-chat", "messages": msgs2, "max_tokens": 2})
    other = httpx.post(node.openai_base + "/chat/completions", timeout=60,
                       json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "另一个对话"}], "max_tokens": 2})
    assert r1.headers["x-request-id"] == r1.json()["id"] != r2.json()["id"]
    assert r1.headers["x-session-id"] == r2.headers["x-session-id"]  # same conversation opening
    assert other.headers["x-session-id"] != r1.headers["x-session-id"]
    explicit = httpx.post(node.openai_base + "/chat/completions", timeout=60, headers={"X-Session-Id": "conv-42"},
                          json={"model": "deepseek-chat", "messages": msgs, "max_tokens": 2})
    assert explicit.headers["x-session-id"] == "conv-42"


def test_seed_chat_endpoint(node):
    r = httpx.post(node.base_url + "/chat", json={"prompt": "如何退货？", "max_tokens": 5}, timeout=60)
    assert r.status_code == 200
    body = r.json()
    assert isinstance(body["response"], str) and body["usage"]["completion_tokens"] <= 5
    assert body["request_id"].startswith("chatcmpl-")
