"""Continuous batching and cancellation, observed from outside through HTTP."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai


def test_sixteen_concurrent_streams_all_complete(node):
    async def one(client, i):
        stream = await client.chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": f"订单 {i} 的状态？"}],
            max_tokens=10 + i, stream=True, extra_body={"ignore_eos": True},
            stream_options={"include_usage": True})
        text, finish, usage = "", None, None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage
        return finish, usage.completion_tokens

    async def main():
        client = openai.AsyncOpenAI(base_url=node.openai_base, api_key="x", max_retries=0, timeout=120)
        return await asyncio.gather(*(one(client, i) for i in range(16)))

    results = asyncio.run(main())
    assert [r[0] for r in results] == ["length"] * 16
    assert [r[1] for r in results] == [10 + i for i in range(16)]


def test_new_request_streams_before_a_long_one_ends(node):
    """Continuous batching: a request that arrives while a long one is generating gets its
    first token (and finishes) while the long one is still streaming."""
    events: list[tuple[str, float]] = []

    async def stream(client, name, max_tokens, delay=0.0):
        await asyncio.sleep(delay)
        s = await client.chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": name}], max_tokens=max_tokens,
            stream=True, extra_body={"ignore_eos": True})
        first = True
        async for chunk in s:
            if first and chunk.choices and chunk.choices[0].delta.content:
                events.append((name + ":first", time.monotonic()))
                first = False
        events.append((name + ":end", time.monotonic()))

    async def main():
        client = openai.AsyncOpenAI(base_url=node.openai_base, api_key="x", max_retries=0, timeout=300)
        long_task = asyncio.create_task(stream(client, "long", 1500))
        while not any(e[0] == "long:first" for e in events):
            await asyncio.sleep(0.01)
        await stream(client, "short", 5)
        assert node.readyz()["running"] >= 1  # the long one is still in the batch
        await long_task

    asyncio.run(main())
    order = [name for name, _ in sorted(events, key=lambda e: e[1])]
    assert order.index("short:first") < order.index("long:end")
    assert order.index("short:end") < order.index("long:end")


def test_disconnect_cancels_generation_and_frees_the_slot(node):
    before = node.readyz()
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "a very long story"}],
            "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", node.openai_base + "/chat/completions", json=body) as r:
            got = 0
            for line in r.iter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    got += 1
                if got >= 3:
                    assert node.readyz()["running"] >= 1  # generating while we read
                    break  # leaving iter_lines closes the response: the client is gone
    # The connection is closed; the engine must drop the request.
    deadline = time.monotonic() + 20
    state = node.readyz()
    while time.monotonic() < deadline and (state["running"] > 0 or state["cancelled_total"] <= before["cancelled_total"]):
        time.sleep(0.1)
        state = node.readyz()
    assert state["running"] == 0
    assert state["cancelled_total"] == before["cancelled_total"] + 1


def test_a_client_gone_while_queued_is_let_go_before_it_gets_a_slot(node_factory):
    """A streamed request waiting behind a full batch writes nothing after its response head,
    so only listening for the disconnect notices that its client left (uvicorn drops writes
    to a closed connection without an error): its turn ends as aborted at once, with no
    token generated, while the batch's one slot is still taken by another request."""
    n = node_factory("--max-batch", "1")
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "a very long story"}],
            "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", n.openai_base + "/chat/completions", json=body) as long_one:
            lines = long_one.iter_lines()
            next(line for line in lines if '"content":"' in line and '"role"' not in line)  # it holds the slot
            with client.stream("POST", n.openai_base + "/chat/completions", json=body) as queued:
                gone = queued.headers["x-request-id"]
                next(queued.iter_lines())  # the role chunk: the reply has started
                assert n.readyz()["waiting"] == 1
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                records = [json.loads(line) for f in n.log_dir.glob("*.jsonl")
                           for line in f.read_text("utf-8").splitlines() if line.strip()]
                mine = [r for r in records if r["request_id"] == gone]
                if mine:
                    break
                time.sleep(0.1)
            assert n.readyz()["running"] == 1, "the long request must still hold the slot"
    assert [(r["status"], r["gen_ai"]["usage"]["output_tokens"]) for r in mine] == [("aborted", 0)]


def test_a_request_computes_the_same_alone_and_in_a_batch(node):
    """Left-padded batching and batched prefill must not change what a request computes:
    greedy output alone equals greedy output while sharing the batch with others."""
    def body(content, n):
        return {"model": "deepseek-chat", "messages": [{"role": "user", "content": content}],
                "max_tokens": n, "temperature": 0, "ignore_eos": True}

    target = body("请帮我生成本月销售报告摘要。", 24)
    alone = httpx.post(node.openai_base + "/chat/completions", json=target, timeout=60).json()

    async def together():
        async with httpx.AsyncClient(timeout=120) as c:
            others = [c.post(node.openai_base + "/chat/completions", json=body("退货" * (3 + 7 * i), 10 + 5 * i))
                      for i in range(5)]
            results = await asyncio.gather(c.post(node.openai_base + "/chat/completions", json=target), *others)
            return results[0].json()

    batched = asyncio.run(together())
    assert batched["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"]


def test_kv_budget_makes_requests_wait_instead_of_running_out_of_memory(node_factory):
    """With a KV store of two slots (620 tokens at a 256-token context), six concurrent
    requests all complete, and the engine never runs more than the store holds (on CUDA the
    store is sized from free memory; an H200 run without a bound ran out of memory at 256
    streams)."""
    n = node_factory("--kv-cache-tokens", "620", "--max-model-len", "256", "--max-batch", "32")
    seen = []

    async def main():
        async with httpx.AsyncClient(base_url=n.base_url, timeout=120) as c:
            async def one(i):
                r = await c.post("/v1/chat/completions", json={
                    "model": "deepseek-chat", "messages": [{"role": "user", "content": f"订单 {i}"}],
                    "max_tokens": 40, "ignore_eos": True})
                return r.status_code, r.json()["usage"]["completion_tokens"]

            tasks = [asyncio.create_task(one(i)) for i in range(6)]
            while not all(t.done() for t in tasks):
                seen.append((await c.get("/readyz")).json()["running"])
                await asyncio.sleep(0.02)
            return [t.result() for t in tasks]

    results = asyncio.run(main())
    assert results == [(200, 40)] * 6
    assert max(seen) <= 2 and max(seen) >= 1
