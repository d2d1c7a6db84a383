"""Every error status the node promises, each in OpenAI's error JSON, and the node keeps serving."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest

CHAT = "/v1/chat/completions"
OK_BODY = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 2}


def _assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"}
    assert isinstance(err["message"], str) and len(err["message"]) > 10
    if code is not None:
        assert err["code"] == code
    return err


@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "not valid JSON"),
    (b"", "empty"),
    (b"[1, 2]", "JSON object"),
    (b'{"model": "deepseek-chat"}', "messages"),
    (b'{"model": "deepseek-chat", "messages": []}', "messages"),
    (b'{"model": "deepseek-chat", "messages": [{"role": "wizard", "content": "x"}]}', "role"),
    (b'{"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}], "n": 2}', "n"),
    (b'{"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}', "max_tokens"),
    (b'{"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}], "temperature": 9}', "temperature"),
    (b'\xff\xfe{}', "UTF-8"),
])
def test_bad_requests_get_400(node, body, fragment):
    r = httpx.post(node.base_url + CHAT, content=body, headers={"content-type": "application/json"}, timeout=30)
    err = _assert_openai_error(r, 400)
    assert fragment.lower() in err["message"].lower()
    assert err["type"] == "invalid_request_error"


def test_unknown_model_is_404(node):
    r = httpx.post(node.base_url + CHAT, json={**OK_BODY, "model": "gpt-17"}, timeout=30)
    err = _assert_openai_error(r, 404, "model_not_found")
    assert "gpt-17" in err["message"]


def test_node_keeps_serving_after_bad_input(node):
    for _ in range(3):
        httpx.post(node.base_url + CHAT, content=b"{{{", timeout=30)
    assert httpx.post(node.base_url + CHAT, json=OK_BODY, timeout=30).status_code == 200


def test_cors_preflight_allows_authorization(node):
    r = httpx.options(node.base_url + "/chat/completions", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"}, timeout=10)
    assert r.status_code == 200
    assert "authorization" in r.headers["access-control-allow-headers"].lower()


def test_empty_authorization_header_is_accepted_when_keys_are_off(node):
    """NextChat sends 'Authorization: ' (empty) when the user set no key."""
    r = httpx.post(node.base_url + "/chat/completions", json=OK_BODY, headers={"Authorization": ""}, timeout=30)
    assert r.status_code == 200


def test_chunked_body_without_content_length_is_accepted(node):
    """NextChat's server forwards bodies with Transfer-Encoding: chunked."""
    import json

    def gen():
        data = json.dumps(OK_BODY).encode()
        yield data[:10]
        yield data[10:]

    r = httpx.post(node.base_url + "/chat/completions", content=gen(), timeout=30)
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 200


@pytest.fixture(scope="module")
def strict_node(tiny_model_dir, tmp_path_factory):
    """Keys on, a short context, a one-slot batch with a one-request queue, a small body limit."""
    from tests.fixtures.node import start_node

    tmp = tmp_path_factory.mktemp("strict")
    keys = tmp / "keys.txt"
    keys.write_text("# team keys\nsk-test-good-key\n")
    n = start_node(tmp, "--model", str(tiny_model_dir), "--api-key-file", str(keys), "--max-model-len", "64",
                   "--max-batch", "1", "--max-queue", "1", "--max-body-bytes", "4096")
    yield n
    n.stop()


AUTH = {"Authorization": "Bearer sk-test-good-key"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": ""}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "sk-test-good-key"}])
def test_missing_or_wrong_key_is_401(strict_node, headers):
    r = httpx.post(strict_node.base_url + CHAT, json=OK_BODY, headers=headers, timeout=30)
    _assert_openai_error(r, 401, "invalid_api_key")


def test_right_key_is_accepted_and_health_needs_none(strict_node):
    assert httpx.post(strict_node.base_url + CHAT, json=OK_BODY, headers=AUTH, timeout=30).status_code == 200
    assert httpx.get(strict_node.base_url + "/healthz", timeout=10).status_code == 200


def test_prompt_over_context_is_400_context_length_exceeded(strict_node):
    body = {**OK_BODY, "messages": [{"role": "user", "content": "退货 " * 200}]}
    r = httpx.post(strict_node.base_url + CHAT, json=body, headers=AUTH, timeout=30)
    err = _assert_openai_error(r, 400, "context_length_exceeded")
    assert "64" in err["message"]


def test_body_over_limit_is_413_with_and_without_content_length(strict_node):
    big = {**OK_BODY, "messages": [{"role": "user", "content": "x" * 10000}]}
    r = httpx.post(strict_node.base_url + CHAT, json=big, headers=AUTH, timeout=30)
    _assert_openai_error(r, 413)
    import json

    data = json.dumps(big).encode()

    def chunks():
        for i in range(0, len(data), 1000):
            yield data[i:i + 1000]

    r = httpx.post(strict_node.base_url + CHAT, content=chunks(), headers=AUTH, timeout=30)
    assert r.request.headers.get("transfer-encoding") == "chunked"
    _assert_openai_error(r, 413)
    assert httpx.post(strict_node.base_url + CHAT, json=OK_BODY, headers=AUTH, timeout=30).status_code == 200


def test_full_queue_is_429_with_retry_after(node_factory):
    """With the one slot taken and the one queue place taken, a third request is refused
    with 429 and a Retry-After. The two holders ask for far more tokens than the test needs
    and hold their streams open until the third request is answered (a short holder once
    finished before the second arrived on a loaded machine, and the queue was never full);
    the second is sent once the first runs."""
    n = node_factory("--max-batch", "1", "--max-queue", "1")
    long = {**OK_BODY, "max_tokens": 3000, "ignore_eos": True, "stream": True}

    async def main():
        release = asyncio.Event()
        async with httpx.AsyncClient(base_url=n.base_url, timeout=60) as c:
            async def hold():
                async with c.stream("POST", CHAT, json=long) as r:
                    # the reply has started (a queued one too); the line iterator is kept: an
                    # abandoned one is closed when collected, which closes the stream, and the
                    # node then ends the turn within milliseconds
                    lines = r.aiter_lines()
                    await lines.__anext__()
                    await release.wait()
                    return r.status_code  # leaving closes the stream: the client is gone

            seen = []

            async def until(state: tuple[int, int]) -> None:
                for _ in range(1000):
                    st = (await c.get("/readyz")).json()
                    seen.append((st["running"], st["waiting"]))
                    if seen[-1] == state:
                        return
                    await asyncio.sleep(0.01)

            # one running, then one waiting: the second is sent once the first runs (sent
            # together, the second could find the first still in the queue's one place: 429)
            holders = [asyncio.create_task(hold())]
            await until((1, 0))
            holders.append(asyncio.create_task(hold()))
            await until((1, 1))
            r = await c.post(CHAT, json=OK_BODY) if seen[-1] == (1, 1) else None
            release.set()
            return r, await asyncio.gather(*holders), sorted(set(seen))

    r, codes, seen = asyncio.run(main())
    assert r is not None, f"the queue was never seen full: {seen}"
    _assert_openai_error(r, 429, "queue_full")
    assert int(r.headers["retry-after"]) >= 1
    assert codes == [200, 200]


def test_not_ready_is_503():
    """A node whose engine has not loaded yet answers 503 (driven in-process with httpx's ASGI
    transport and no lifespan, so the engine is never started: the real not-ready path)."""
    from inference.app import create_app
    from inference.config import NodeConfig
    from inference.engine.upstream import UpstreamEngine, UpstreamOptions

    config = NodeConfig(engine="upstream", engine_options=UpstreamOptions(url="http://127.0.0.1:9/v1"),
                        instrumentation=False)
    app = create_app(config, engine=UpstreamEngine(config.engine_options.url))

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node") as c:
            return await c.post(CHAT, json=OK_BODY), await c.get("/readyz")

    r, ready = asyncio.run(main())
    _assert_openai_error(r, 503)
    assert ready.status_code == 503


@pytest.mark.parametrize("argv, fragment", [
    (["serve", "--bogus"], "unrecognized arguments"),
    (["serve", "--model", "/nonexistent/model"], "no such folder"),
    (["serve", "--engine", "upstream"], "--upstream-url"),
    (["serve", "--model", ".", "--max-queue", "0"], "config.json"),
])
def test_bad_flags_give_one_line_and_exit_2(argv, fragment):
    p = subprocess.run([sys.executable, "-m", "seekwatch", *argv], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], p.stderr
