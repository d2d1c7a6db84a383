"""The upstream engine, tested against a second real node as its upstream."""
from __future__ import annotations

import httpx
import openai


def test_upstream_engine_streams_through(node, node_factory):
    front = node_factory("--engine", "upstream", "--upstream-url", node.openai_base,
                         "--served-model-name", "deepseek-chat", with_model=False)
    direct = openai.OpenAI(base_url=node.openai_base, api_key="x", max_retries=0)
    proxied = openai.OpenAI(base_url=front.openai_base, api_key="x", max_retries=0)
    kw = dict(model="deepseek-chat", messages=[{"role": "user", "content": "故障申报：打印机卡纸"}],
              temperature=0, max_tokens=10, extra_body={"ignore_eos": True})
    expected = direct.chat.completions.create(**kw).choices[0].message.content
    chunks = list(proxied.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    usage = [c.usage for c in chunks if c.usage][0]
    assert usage.completion_tokens == 10
    whole = proxied.chat.completions.create(**kw)
    assert whole.choices[0].message.content == expected and whole.choices[0].finish_reason == "length"


def test_upstream_errors_pass_through_in_openai_shape(node, node_factory):
    front = node_factory("--engine", "upstream", "--upstream-url", node.openai_base,
                         "--served-model-name", "deepseek-chat", "--upstream-model", "no-such-model",
                         with_model=False)
    r = httpx.post(front.openai_base + "/chat/completions", timeout=30,
                   json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404
    assert "no-such-model" in r.json()["error"]["message"]


def test_unreachable_upstream_is_502(node_factory):
    from tests.fixtures.ports import free_port

    front = node_factory("--engine", "upstream", "--upstream-url", f"http://127.0.0.1:{free_port()}/v1",
                         "--served-model-name", "deepseek-chat", with_model=False)
    r = httpx.post(front.openai_base + "/chat/completions", timeout=30,
                   json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 502
    assert "unreachable" in r.json()["error"]["message"]
