"""benchmarks/report.py: a re-run replaces its own block in the docs and nothing else."""
from __future__ import annotations

from benchmarks.report import write_block


def test_first_run_appends_under_a_heading_and_a_rerun_replaces_only_its_block(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- other -->\nkept\n<!-- /other -->\n", "utf-8")
    write_block("mine", "Mine", "| a |\n| 1 |", doc)
    assert doc.read_text("utf-8") == ("# Benchmarks\n\n<!-- other -->\nkept\n<!-- /other -->\n\n"
                                      "## Mine\n\n<!-- mine -->\n| a |\n| 1 |\n<!-- /mine -->\n")
    write_block("mine", "Mine", "| a |\n| 2 |", doc)
    text = doc.read_text("utf-8")
    assert text.count("## Mine") == 1 and "| 2 |" in text and "| 1 |" not in text and "kept" in text


def test_serve_bench_keeps_the_requests_that_arrive_together_apart():
    """The first ``concurrency`` requests of a scenario arrive at once; the rest start as
    slots free up. Their time to first token is summarised apart (the 64-stream target is
    about them), from the raw per-request values, and shown in the report."""
    from benchmarks.serve_bench import markdown, summarise

    results = [{"ttft": t, "tpot": 0.01, "e2e": 1.0, "tokens": 10} for t in (0.4, 0.2, 0.3, 0.9)]
    results += [{"ttft": 0.01, "tpot": 0.01, "e2e": 1.0, "tokens": 10}] * 4 + [{"error": 500}]
    s = summarise(results, 2.0, 4, None)
    assert s["together"] == 4 and s["requests"] == 9 and s["errors"] == 1 and s["error_kinds"] == ["500"]
    assert round(s["ttft_together_p50_ms"]) == 350  # the median of 0.2, 0.3, 0.4, 0.9 s
    assert round(s["ttft_p50_ms"]) == 105           # over all 8: the later four pull it down
    assert "ttft_together_p50_ms" not in summarise(results, 2.0, 4, 5.0)  # Poisson: nobody arrives together
    report = markdown({"date": "d", "device": "x", "machine": "m", "model": "t", "prompt_tokens": "1",
                       "max_tokens_range": "1", "torch": "t", "command": "c", "scenarios": [s]})
    assert "| 4 of 9 (4 streams) | 350 / " in report
    assert "| node, 4 concurrent streams | 9 (1 failed: 500) | " in report


def test_serve_bench_counts_a_broken_connection_as_a_failed_request():
    """A request whose connection fails (here: nothing listens on the port) is one failed
    request in the scenario's summary, with its cause, not the end of the whole run."""
    import asyncio

    import httpx

    from benchmarks.serve_bench import one_stream, summarise
    from contracts.supervisor import free_port

    async def go():
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{free_port()}") as client:
            return await one_stream(client, "hello", 4)

    r = asyncio.run(go())
    assert r["error"].startswith("ConnectError")
    s = summarise([r, {"ttft": 0.1, "tpot": 0.01, "e2e": 1.0, "tokens": 10}], 1.0, 2, None)
    assert s["errors"] == 1 and s["error_kinds"][0].startswith("ConnectError") and s["aggregate_tok_s"] == 10


def test_the_sequential_baseline_keeps_warming_up_for_the_time_asked(tiny_model_dir):
    """On an H200 plain ``generate`` ran at half speed for about a minute after loading, so
    serve_bench warms its baseline up for a set time before measuring; the warm-up requests'
    rates are kept beside the measured ones."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.serve_bench import sequential_baseline

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompts, maxes = ["订单状态？", "How do I reset my password?", "退货", "你好"], [3, 4, 2, 3]
    cpu = torch.device("cpu")
    cold = sequential_baseline(model, tok, cpu, prompts, maxes)
    assert cold["warmup_tok_s"] == [] and cold["tokens"] == sum(maxes)
    warm = sequential_baseline(model, tok, cpu, prompts, maxes, warmup_s=0.5)
    assert warm["warmup_s"] >= 0.5 and len(warm["warmup_tok_s"]) >= 1
    assert warm["tokens"] == sum(maxes) and len(warm["per_request_tok_s"]) == 4


def test_serve_bench_spreads_streams_over_load_generator_processes(tmp_path):
    """With two load-generator processes the scenario sends every request once, keeps the
    first ``concurrency`` together, and counts exactly the tokens the server sent; the same
    as with one process, and with Poisson arrivals. The server is relay_bench's streaming
    fake upstream on loopback (what an OpenAI-style server sends, minus the model), so the
    token counts are known: each reply has ``max_tokens`` tokens."""
    import asyncio
    import sys

    import httpx

    from benchmarks import relay_bench
    from benchmarks.serve_bench import client_processes, run_scenario
    from contracts.supervisor import ProcessSpec, free_port, start

    port = free_port()
    up = start(ProcessSpec(name="fake upstream", output=tmp_path / "up.out",
                           argv=[sys.executable, relay_bench.__file__, "--serve-upstream", str(port)]))
    try:
        def answers():
            try:
                httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"max_tokens": 1}, timeout=2)
                return True
            except httpx.HTTPError:
                return False

        up.wait_ready(answers, 20, interval=0.1)
        prompts, maxes = ["hi"] * 7, [3, 4, 5, 6, 7, 8, 9]
        base = f"http://127.0.0.1:{port}"
        for processes, rate in ((1, None), (2, None), (2, 50.0)):
            s = asyncio.run(run_scenario(base, prompts, maxes, 4, poisson_rate=rate, processes=processes))
            assert s["requests"] == 7 and s["errors"] == 0 and s["client_processes"] == processes
            assert round(s["aggregate_tok_s"] * s["wall_s"]) == sum(maxes)
            assert s.get("together") == (None if rate else 4)
    finally:
        up.stop()
    assert client_processes(1) == 1 and client_processes(256) >= 1


def test_relay_bench_reports_the_engine_process_apart_from_the_http_side():
    """With the relay in an engine process, the per-token CPU row shows the node's HTTP side
    and the engine's process apart and their sum; without, the node's one figure."""
    from benchmarks.relay_bench import markdown

    single = {"requests": 4, "ttft_p50_direct_ms": 4.0, "ttft_p50_node_ms": 5.5, "added_ttft_p50_ms": 1.5,
              "added_ttft_paired_median_ms": 1.4, "e2e_p50_direct_ms": 10.0, "e2e_p50_node_ms": 11.0}
    node = {"streams": 256, "requests": 512, "tokens": 1000, "aggregate_tok_s": 900.0,
            "node_cpu_s": 0.04, "node_cpu_us_per_token": 40.0}
    both = {"direct": {"aggregate_tok_s": 1000.0}, "node": node}
    result = {"date": "d", "device": "x", "machine": "m", "python": "3", "tokens": 200, "command": "c",
              "single": single, "concurrent": both}
    assert "| 256 streams, node CPU per relayed token | – | 40.0 µs (0.0 s for 1,000 tokens) |" in markdown(result)
    node.update(engine_process_cpu_s=0.15, engine_process_cpu_us_per_token=150.0)
    report = markdown(dict(result, engine_process=True))
    assert "HTTP side + engine process | – | 40.0 + 150.0 = 190.0 µs (1,000 tokens) |" in report
    assert "the relay in an engine process of its own" in report
    node.update(gc_pauses_over_1ms=3, gc_pause_s=0.012, gc_longest_pause_ms=7.25)
    assert "garbage-collector pauses over 1 ms (node and engine process) | – | 3, 12 ms in all, the longest 7.2 ms |" \
        in markdown(result)


def test_step_profile_sorts_kernels_by_kind_and_profiles_the_running_loop(tiny_model_dir):
    """benchmarks/step_profile.py: the kernel names of an H200 profile land in their kinds,
    and the live mode runs the engine loop, counts its decode steps and the engine's own
    account, with no synchronising call to report (the CPU has none to see)."""
    import asyncio
    import types

    from benchmarks.step_profile import kind_of, run

    assert [kind_of(n) for n in ("nvjet_sm90_tst_256x8_64x6_4x1_v_bz_TNT", "_partial", "_merge",
                                 "flash_fwd_splitkv_kernel", "_rotary", "_silu_and_mul",
                                 "void at::native::vectorized_layer_norm_kernel<c10::BFloat16>",
                                 "void at::native::index_elementwise_kernel<128, 4, index_copy>",
                                 "void at::native::vectorized_elementwise_kernel<8, CUDAFunctor_add>")] == [
        "gemm", "attention", "attention", "attention", "rotary", "silu", "norm", "copy", "other"]
    args = types.SimpleNamespace(model=str(tiny_model_dir), device="cpu", rows=[2], live=[2], window=0.5,
                                 lengths=[8, 20], max_model_len=256, reps=1, prefill=[32], kv_cache_dtype="auto")
    result = asyncio.run(run(args))
    (entry,) = result["live"]
    assert entry["rows"] == 2 and entry["decode_steps"] > 0 and entry["syncs"] == []
    assert set(entry["account_ms_per_step"]) == {"forward", "sample_and_wait", "emit"}


def test_read_events_stamps_the_first_token_when_its_read_arrived():
    """The time to first token is taken from ``arrived`` (when the read carrying the token
    returned), not from when the decoder got round to it; a role-only delta is no token."""
    import asyncio
    import json

    from benchmarks.report import read_events

    async def events():
        yield json.dumps({"choices": [{"delta": {"role": "assistant"}}]})
        yield json.dumps({"choices": [{"delta": {"content": "hi"}}]})
        yield json.dumps({"choices": [{"delta": {"content": " there"}}]})
        yield json.dumps({"choices": [], "usage": {"completion_tokens": 7}})

    stamps = iter([11.0, 12.5, 13.0, 14.0])
    assert asyncio.run(read_events(events(), 10.0, lambda: next(stamps))) == (1.0, 7)


def test_relay_bench_stamps_events_with_the_read_that_carried_them(tmp_path):
    """A fast upstream's 200-token reply arrives in fewer reads than it has events; every
    event carries the time its read returned, so the direct figure is not charged for
    decoding the events behind the first token. Real aiohttp against relay_bench's fake
    upstream on loopback."""
    import asyncio
    import sys
    import time

    import httpx

    from benchmarks import relay_bench
    from contracts.supervisor import ProcessSpec, free_port, start

    port = free_port()
    up = start(ProcessSpec(name="fake upstream", output=tmp_path / "up.out",
                           argv=[sys.executable, relay_bench.__file__, "--serve-upstream", str(port)]))

    async def read():
        async with relay_bench._session(1) as session:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "stream": True}
            async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
                read_at = [0.0]
                seen = []
                async for _ in relay_bench._events(r, read_at):
                    seen.append((read_at[0], time.perf_counter()))
                return seen

    def answers():
        try:
            return httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"max_tokens": 1},
                              timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        up.wait_ready(answers, 20, interval=0.1)
        seen = asyncio.run(read())
    finally:
        up.stop()
    assert len(seen) == 201  # 200 tokens and the usage chunk
    assert all(0 < stamp <= yielded for stamp, yielded in seen)
    assert len({stamp for stamp, _ in seen}) < len(seen)  # several events per read, one stamp each


def test_request_path_bench_times_both_response_classes_through_a_whole_streamed_reply():
    """Each class is timed over replies that really stream: the first body write comes
    before the end of the response."""
    import asyncio

    from starlette.responses import StreamingResponse

    from benchmarks.request_path_bench import measure
    from inference.event_stream import EventStreamResponse

    for cls in (StreamingResponse, EventStreamResponse):
        to_first, whole = asyncio.run(measure(cls, 20))
        assert 0 < to_first < whole


def test_scenario_model_generates_every_requested_token_and_less_padding_never_costs_more():
    """The replay hands out exactly the tokens the workload asks for (a recount from the
    same seeded draws), and a variant that only pads less is never slower."""
    import random

    from benchmarks.scenario_model import POW2, Variant, coarse_prefill, replay

    rng = random.Random(3)  # the replay draws (prompt, max_tokens) per request, streams × 2
    pairs = [(rng.randint(64, 512), rng.randint(128, 256)) for _ in range(32)]
    asked = sum(m for _, m in pairs)
    results = [replay(v, streams=16, seed=3) for v in (
        Variant("before", POW2, coarse_prefill), Variant("as it is"), Variant("unpadded", prefill_buckets=None))]
    assert [tokens for tokens, _ in results] == [asked] * 3
    before, now, unpadded = (seconds for _, seconds in results)
    assert unpadded <= now <= before
