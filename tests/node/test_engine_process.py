"""``serve --engine-process``: the engine in a child process behind the same interface.

Real nodes on the tiny model; the engine's process is a real ``spawn`` child, killed for
real where a test says so."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

PROMPTS = ["故障申报：打印机卡纸", "请帮我生成本月销售报告摘要。"]


@pytest.fixture(scope="module")
def process_node(tiny_model_dir, tmp_path_factory):
    from seekwatch.node_process import start_node

    n = start_node(tmp_path_factory.mktemp("engine-process"), "--model", str(tiny_model_dir), "--engine-process",
                   "--max-batch", "4")
    yield n
    n.stop()


def _engine_pid(node) -> int:
    """The engine's process: the node's child started by ``multiprocessing``'s spawn."""
    pid = node.proc.pid
    children = [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
                for c in (t / "children").read_text().split()]
    engines = [c for c in children if "--multiprocessing-fork" in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(engines) == 1, [Path(f"/proc/{c}/cmdline").read_bytes() for c in children]
    return engines[0]


def test_the_engine_process_answers_as_the_in_process_engine(node, process_node):
    """Greedy replies, streamed and whole, and their usage equal the in-process node's; the
    readiness report (decode path, batch size) is the child engine's."""
    kw = dict(model="deepseek-chat", temperature=0, max_tokens=16, extra_body={"ignore_eos": True})
    inproc = openai.OpenAI(base_url=node.openai_base, api_key="x", max_retries=0)
    separate = openai.OpenAI(base_url=process_node.openai_base, api_key="x", max_retries=0)
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        want = inproc.chat.completions.create(messages=messages, **kw)
        got = separate.chat.completions.create(messages=messages, **kw)
        assert got.choices[0].message.content == want.choices[0].message.content
        assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (want.usage.prompt_tokens, 16)
        chunks = list(separate.chat.completions.create(messages=messages, stream=True,
                                                       stream_options={"include_usage": True}, **kw))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.choices[0].message.content
        assert [c.usage.completion_tokens for c in chunks if c.usage] == [16]
    ready = process_node.readyz()
    assert ready["ready"] and ready["max_batch"] == 4 and ready["decode_path"] == node.readyz()["decode_path"]


def test_refusals_keep_their_status_type_and_code(process_node):
    """An error raised in the engine's process reaches the client as if raised in the node."""
    r = httpx.post(process_node.openai_base + "/chat/completions", timeout=30,
                   json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "x " * 5000}]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "context_length_exceeded"
    assert "maximum context length" in err["message"]


def test_concurrent_streams_all_complete(process_node):
    async def one(client, i):
        stream = await client.chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": f"订单 {i} 的状态？"}],
            max_tokens=5 + i, stream=True, extra_body={"ignore_eos": True}, stream_options={"include_usage": True})
        finish, usage = None, None
        async for chunk in stream:
            if chunk.choices:
                finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
        return finish, usage.completion_tokens

    async def main():
        client = openai.AsyncOpenAI(base_url=process_node.openai_base, api_key="x", max_retries=0, timeout=120)
        return await asyncio.gather(*(one(client, i) for i in range(8)))  # 8 streams on 4 slots: 4 wait

    assert asyncio.run(main()) == [("length", 5 + i) for i in range(8)]


def test_a_client_that_goes_away_frees_its_slot_in_the_engine_process(process_node):
    before = process_node.readyz()
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "a very long story"}],
            "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", process_node.openai_base + "/chat/completions", json=body) as r:
            for n, line in enumerate(line for line in r.iter_lines() if '"content"' in line):
                if n >= 3:
                    break  # leaving closes the response: the client is gone
    deadline = time.monotonic() + 30  # the state crosses the pipe every 0.1 s
    state = process_node.readyz()
    while time.monotonic() < deadline and (state["running"] or state["cancelled_total"] == before["cancelled_total"]):
        time.sleep(0.1)
        state = process_node.readyz()
    assert state["running"] == 0 and state["cancelled_total"] == before["cancelled_total"] + 1


def test_the_engine_process_logs_its_own_account(process_node):
    """Every 10 s of activity the child logs how late its event loop ran (it shares a GIL
    with the engine's thread), how long admission took and how many messages it sent: what
    a GPU run needs to see where the engine process's time goes."""
    httpx.post(process_node.openai_base + "/chat/completions", timeout=60,
               json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    deadline = time.monotonic() + 40  # the account comes at most 10 s after activity; this bounds a hang
    lines: list[str] = []
    while time.monotonic() < deadline and not lines:
        time.sleep(0.5)
        lines = [ln for ln in process_node.output.read_text("utf-8", "replace").splitlines()
                 if "seekwatch.engine.process: engine process: last" in ln]
    assert lines, "no account from the engine process"
    assert "event loop late by" in lines[0] and "requests admitted in" in lines[0] and "messages out" in lines[0]


def test_a_killed_engine_process_ends_open_streams_with_503_and_fails_liveness(tiny_model_dir, node_factory):
    n = node_factory("--engine-process", "--max-batch", "2")
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "a very long story"}],
            "max_tokens": 3000, "ignore_eos": True, "stream": True}
    events = []
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", n.openai_base + "/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 4:  # the role and three content chunks are in
                        os.kill(_engine_pid(n), signal.SIGKILL)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "engine_unavailable" and "engine process exited (exit code -9)" in error["message"]
    r = httpx.get(n.base_url + "/readyz", timeout=5)
    assert r.status_code == 503 and r.json()["ready"] is False
    r = httpx.get(n.base_url + "/healthz", timeout=5)  # only a restart helps: liveness fails
    assert r.status_code == 503 and "engine process exited" in r.json()["error"]
    r = httpx.post(n.openai_base + "/chat/completions", timeout=30,
                   json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and "engine process exited" in r.json()["error"]["message"]


def test_an_engine_that_cannot_start_says_why(tmp_path):
    """The child's start-up error (here: a folder that holds no model) is what ``start``
    raises in the node (which reports it on /readyz): the same words the engine says when
    started in the node's own process."""
    from inference.config import NodeConfig
    from inference.engine import registry
    from inference.engine.process import EngineProcess
    from inference.engine.transformers_cb import TransformersOptions

    config = NodeConfig(engine="transformers", engine_options=TransformersOptions(model=str(tmp_path), device="cpu"))
    with pytest.raises(Exception) as in_process:
        asyncio.run(registry.get("transformers").build(config.engine_options, config).start())
    engine = EngineProcess("transformers", config.engine_options, config)
    with pytest.raises(RuntimeError) as separate:
        asyncio.run(engine.start())
    assert str(separate.value) == f"{type(in_process.value).__name__}: {in_process.value}"
    assert engine.state().ready is False


def test_any_engine_runs_in_the_engine_process(node, node_factory):
    """The upstream engine in a child process, relaying to a real node: the reply streams
    through, and the upstream's own refusal keeps its status and code across the pipe."""
    front = node_factory("--engine", "upstream", "--upstream-url", node.openai_base, "--engine-process",
                         "--served-model-name", "deepseek-chat", with_model=False)
    kw = dict(model="deepseek-chat", messages=[{"role": "user", "content": PROMPTS[0]}], temperature=0,
              max_tokens=8, extra_body={"ignore_eos": True})
    want = openai.OpenAI(base_url=node.openai_base, api_key="x", max_retries=0).chat.completions.create(**kw)
    chunks = openai.OpenAI(base_url=front.openai_base, api_key="x", max_retries=0).chat.completions.create(
        stream=True, **kw)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.choices[0].message.content
    r = httpx.post(front.openai_base + "/chat/completions", timeout=30,
                   json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "x " * 5000}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_both_processes_freeze_their_start_up_heap(process_node):
    """The node and the engine's process each collect and then freeze what start-up left
    alive (tens of thousands of objects: the app, the engine, the libraries), so the
    garbage collector's full walks no longer stop the event loop over them; each says so
    once in the log, with the count."""
    import re

    process_node.readyz()
    deadline = time.monotonic() + 30
    while True:
        text = process_node.output.read_text("utf-8", "replace")
        counts = {}
        for who in ("node", "engine process"):
            found = re.findall(rf"seekwatch.heap: {who}: (\d+) objects alive after start-up frozen", text)
            if found:
                counts[who] = [int(n) for n in found]
        if len(counts) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(counts["node"]) == 1 and len(counts["engine process"]) == 1, text[-3000:]
    assert counts["node"][0] > 10_000 and counts["engine process"][0] > 10_000


def test_the_engine_process_stops_without_leak_reports(tiny_model_dir, tmp_path):
    """A node with its engine in a process of its own, stopped after a turn: the engine's
    last account reaches the log (its logging is flushed), and the log carries none of the
    reports an interpreter's end used to add (Triton's bindings' hundreds of "leaked"
    lines, the resource tracker's leaked semaphore of a progress bar's lock)."""
    from seekwatch.node_process import start_node

    n = start_node(tmp_path, "--model", str(tiny_model_dir), "--engine-process", "--max-batch", "2")
    try:
        r = httpx.post(n.openai_base + "/chat/completions", timeout=60, json={
            "model": "deepseek-chat", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 3})
        assert r.status_code == 200
    finally:
        n.stop()
    text = n.output.read_text("utf-8", "replace")
    assert "engine: last" in text.split("Shutting down", 1)[1]
    assert "leaked" not in text and "nanobind" not in text, text[text.find("leaked") - 300:][:600]
