"""The engine's slot KV store, chunked prefill and bucketed decode, on the CPU.

The CUDA-graph path replays exactly the step that runs here with ``bucketed=True`` (rows
padded to a batch bucket, reads padded to a width bucket; only the capture itself needs
CUDA), so these tests pin its arithmetic: greedy tokens must equal ``model.generate`` on the
plain model, token for token, for a request alone and inside a mixed batch, on the node's
DeepSeek (Llama) layout and on the two R1-distill layouts (Qwen2, Llama 3). The engine runs
in-process (no HTTP), in float32.
"""
from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import torch

from inference.engine.base import GenerationRequest, SamplingParams
from inference.engine.slot_cache import SlotKVCache
from inference.engine.transformers_cb import TransformersEngine, batch_sizes, bucket_for, buckets
from inference.tiny_model import make_variant

PROMPTS = ["请帮我生成本月销售报告摘要。", "退货" * 30, "How do I reset my password? " * 9, "订单 12345 的状态？"]
NEW_TOKENS = [12, 20, 7, 16]


@pytest.fixture(scope="module", params=["tiny", "qwen2-r1", "llama3-r1"])
def model_dir(request, tiny_model_dir, tmp_path_factory) -> Path:
    if request.param == "tiny":
        return tiny_model_dir
    return make_variant(tiny_model_dir, tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def reference(model_dir) -> list[list[int]]:
    """Greedy tokens from transformers' own ``generate`` on the plain model, one prompt at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for prompt, n in zip(PROMPTS, NEW_TOKENS):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
        with torch.inference_mode():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        out.append(gen[0, ids.shape[1]:].tolist())
    return out


def _run(engine: TransformersEngine, prompts, new_tokens, together: bool, **sampling) -> list[list[int]]:
    """Greedy token ids per prompt (EOS ignored); ``sampling``: other ``SamplingParams``
    fields (the temperature among them), each a value or a function of the request's index."""
    async def one(i):
        settings = {"temperature": 0.0, "ignore_eos": True}
        settings.update({k: v(i) if callable(v) else v for k, v in sampling.items()})
        req = GenerationRequest(f"r{i}-{together}", "m", [{"role": "user", "content": prompts[i]}],
                                SamplingParams(max_tokens=new_tokens[i], **settings))
        async for _ in await engine.generate(req):
            pass
        return engine.last_tokens.pop(req.request_id)

    async def main():
        await engine.start()
        try:
            if together:
                return list(await asyncio.gather(*(one(i) for i in range(len(prompts)))))
            return [await one(i) for i in range(len(prompts))]
        finally:
            await engine.stop()

    return asyncio.run(main())


def _load(engine: TransformersEngine) -> None:
    """Start the engine (loading, start-up checks and timings) and stop it again."""
    async def main():
        await engine.start()
        await engine.stop()

    asyncio.run(main())


def _engine(model_dir, **kw) -> TransformersEngine:
    engine = TransformersEngine(model_dir, device="cpu", max_model_len=kw.pop("max_model_len", 512), **kw)
    engine.record_tokens = True
    return engine


@pytest.mark.parametrize("bucketed,attention,overlap", [(True, "masked", True), (False, "masked", True),
                                                        (False, "masked", False), (True, "varlen", True)],
                         ids=["graph-shapes", "exact-shapes", "exact-shapes-no-overlap", "varlen-graph-shapes"])
def test_greedy_tokens_equal_generate_alone_and_in_a_mixed_batch(model_dir, reference, bucketed, attention, overlap):
    """A 16-token prefill budget splits every prompt over several steps, and with 3 slots the
    fourth request waits for one: joins, leaves, slot moves and chunking all happen, with
    each decode step launched before the previous one is taken in (and without). The
    variable-length case runs the CUDA path's bookkeeping with the reference kernel, and the
    fused RMSNorms."""
    kw = dict(max_batch=3, bucketed=bucketed, max_prefill_tokens=16, attention=attention, overlap=overlap,
              fuse_norms=attention == "varlen")  # the CUDA defaults, on the CPU
    engine = _engine(model_dir, **kw)
    alone = _run(engine, PROMPTS, NEW_TOKENS, False)
    assert engine.attention_path.startswith("variable length" if attention == "varlen" else "masked SDPA")
    assert engine.width_buckets == [256, 512]
    # with the variable-length attention and padded shapes, prefill runs the static shapes a graph captures
    assert engine.prefill_path.startswith("eager (static shapes" if attention == "varlen" else "eager")
    layers = engine.model.config.num_hidden_layers
    assert engine.fused_norms == (2 * layers + 1 if attention == "varlen" else 0)
    assert alone == reference
    together = _run(_engine(model_dir, **kw), PROMPTS, NEW_TOKENS, True)
    assert together == reference


def test_buckets_cover_every_size_with_the_smallest_fit():
    assert buckets(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert buckets(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert buckets(832, 256) == [256, 512, 832]
    assert buckets(200, 256) == [200]
    sizes = buckets(100)
    assert [bucket_for(n, sizes) for n in (1, 3, 64, 65, 100)] == [1, 4, 64, 100, 100]
    with pytest.raises(ValueError):
        bucket_for(101, sizes)


def test_batch_buckets_are_powers_of_two_then_every_32_rows():
    assert batch_sizes(256) == [1, 2, 4, 8, 16, 32, 64, 128, 160, 192, 224, 256]
    assert batch_sizes(300) == [1, 2, 4, 8, 16, 32, 64, 128, 160, 192, 224, 256, 288, 300]
    assert batch_sizes(140) == [1, 2, 4, 8, 16, 32, 64, 128, 140]
    assert batch_sizes(100) == buckets(100)
    assert [bucket_for(n, batch_sizes(256)) for n in (129, 140, 161, 200, 255)] == [160, 160, 192, 224, 256]


def test_slot_moves_and_swaps_keep_each_slots_tokens():
    rng = random.Random(0)
    store = SlotKVCache(2, 2, 4, torch.float32, torch.device("cpu"), slots=5, max_len=16)
    for t in store.keys + store.values:
        t.copy_(torch.randn_like(t))
    for _ in range(30):
        before = [t.clone() for t in store.keys + store.values]
        a, b = rng.sample(range(5), 2)
        width = rng.randint(1, 16)
        if rng.random() < 0.5:
            store.move([a, b], [b, a], width)  # swap
            for old, new in zip(before, store.keys + store.values):
                assert torch.equal(new[a, :width], old[b, :width]) and torch.equal(new[b, :width], old[a, :width])
        else:
            store.move([a], [b], width)
            for old, new in zip(before, store.keys + store.values):
                assert torch.equal(new[b, :width], old[a, :width]) and torch.equal(new[a], old[a])
                assert torch.equal(new[b, width:], old[b, width:])  # past the width: untouched


def test_padding_rows_write_only_the_trash_column():
    store = SlotKVCache(1, 1, 2, torch.float32, torch.device("cpu"), slots=3, max_len=8)
    idx = store.write_index(torch.arange(3), torch.tensor([[5], [-1], [-1]]))
    assert idx.view(-1).tolist() == [5, 9 + 8, 18 + 8]
    mask = store.mask(torch.tensor([[5], [-1], [-1]]), 8)
    assert mask.shape == (3, 1, 1, 8)
    assert (mask[0, 0, 0, :6] == 0).all() and (mask[0, 0, 0, 6:] < -1e30).all()
    assert (mask[1:] < -1e30).all()


def test_a_burst_beyond_the_store_queues_and_completes(tiny_model_dir):
    """Two slots, eight requests: all complete with their full length, never more than two
    hold a slot at once."""
    engine = _engine(tiny_model_dir, max_batch=8, kv_cache_tokens=2 * 512 + 100)
    held = []
    admit = engine._admit

    def watching_admit():
        admit()
        held.append(len(engine._running) + len(engine._prefilling))

    engine._admit = watching_admit
    prompts = [f"订单 {i} " * (1 + i) for i in range(8)]
    out = _run(engine, prompts, [5 + i for i in range(8)], True)
    assert [len(t) for t in out] == [5 + i for i in range(8)]
    assert engine._kv.slots == 2 and max(held) == 2


def test_a_stream_closed_before_its_first_output_frees_its_slot(tiny_model_dir):
    """A client gone between admission and its first token: closing the never-read stream
    drops the sequence (a generator closed before it started runs none of its cleanup, and
    the sequence would have generated all its 400 tokens for nobody)."""
    engine = _engine(tiny_model_dir, max_batch=2)

    async def main():
        await engine.start()
        try:
            req = GenerationRequest("gone", "m", [{"role": "user", "content": "hi"}],
                                    SamplingParams(temperature=0, max_tokens=400, ignore_eos=True))
            stream = await engine.generate(req)
            await stream.aclose()
            for _ in range(600):  # the engine thread drops it at its next step
                state = engine.state()
                if state.running == 0 and state.waiting == 0:
                    return state, engine.last_tokens.get("gone")
                await asyncio.sleep(0.05)
            raise AssertionError(f"the closed stream still runs: {engine.state()}")
        finally:
            await engine.stop()

    state, tokens = asyncio.run(main())
    assert state.cancelled_total == 1 and tokens is None  # it never ran to its 400 tokens


def test_the_engine_account_says_how_first_tokens_waited():
    """The 10-second account ends with the first tokens: mean time from arrival, the mean and
    longest wait for a first prompt chunk (what a burst's time to first token is made of)."""
    from inference.engine.transformers_cb import StepStats

    stats = StepStats()
    stats.add_first(0.050, 0.120)
    stats.add_first(0.250, 0.380)
    assert stats.summary().endswith("2 first tokens, 250 ms after arrival on average, of which 150 ms "
                                    "waiting for a first chunk (at most 250 ms)")


def test_a_long_prompt_is_prefilled_in_chunks_while_a_stream_keeps_decoding(tiny_model_dir):
    """Chunked prefill: while a long prompt is prefilled 16 tokens per step, the running
    stream gets a token in every one of those steps (counted in the engine thread's order)."""
    engine = _engine(tiny_model_dir, max_batch=4, max_prefill_tokens=16)
    order: list[tuple[str, int]] = []
    after_token = engine._after_token
    engine._after_token = lambda seq, *a: (order.append((seq.request_id, len(seq.generated))), after_token(seq, *a))
    long_prompt = "退货 订单 " * 60

    async def main():
        await engine.start()
        try:
            first = GenerationRequest("stream", "m", [{"role": "user", "content": "hi"}],
                                      SamplingParams(temperature=0, max_tokens=400, ignore_eos=True))
            stream = await engine.generate(first)
            await stream.__anext__()  # the stream is decoding
            second = GenerationRequest("long", "m", [{"role": "user", "content": long_prompt}],
                                       SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
            async for _ in await engine.generate(second):
                pass
            await stream.aclose()
        finally:
            await engine.stop()

    asyncio.run(main())
    prompt_tokens = len(engine.encode_prompt([{"role": "user", "content": long_prompt}]))
    chunks = -(-prompt_tokens // 16)
    start = next(i for i, (rid, _) in enumerate(order) if rid == "stream")
    long_first = next(i for i, (rid, _) in enumerate(order) if rid == "long")
    during = sum(1 for rid, _ in order[start + 1:long_first] if rid == "stream")
    assert chunks >= 10
    assert during >= chunks - 1


def test_sliding_window_models_are_capped_at_their_window():
    from inference.engine.transformers_cb import sliding_window

    class Cfg:  # the attributes transformers configs carry
        def __init__(self, **kw):
            self.__dict__.update(kw)

    assert sliding_window(Cfg(sliding_window=4096, use_sliding_window=True)) == 4096
    assert sliding_window(Cfg(sliding_window=4096, use_sliding_window=False)) is None
    assert sliding_window(Cfg(sliding_window=4096, layer_types=["full_attention"] * 4)) is None
    assert sliding_window(Cfg(sliding_window=512, layer_types=["sliding_attention", "full_attention"])) == 512
    assert sliding_window(Cfg(sliding_window=None)) is None


def test_packed_prefill_sees_only_its_own_sequence_up_to_its_position():
    store = SlotKVCache(1, 1, 2, torch.float32, torch.device("cpu"), slots=4, max_len=8)
    # slot 2: tokens at positions 3, 4 (0-2 prefilled earlier); slot 0: positions 0, 1, 2
    cache, mask, positions = store.packed([(2, 3, 2), (0, 0, 3)])
    assert positions[0, :5].tolist() == [3, 4, 0, 1, 2]
    assert cache.write_index[:5].tolist() == [2 * 9 + 3, 2 * 9 + 4, 0, 1, 2]
    assert set(cache.write_index[5:].tolist()) == {8}  # padding tokens write to slot 0's trash column
    keys = cache.read_index.tolist()
    assert len(keys) % 16 == 0 and keys[:8] == [18, 19, 20, 21, 22, 0, 1, 2]
    assert positions.shape[1] == 64 and cache.write_index.shape[0] == 64  # padded to TOKEN_STEP
    assert set(keys[8:]) == {8}  # padding keys: slot 0's trash column
    visible = (mask[0, 0] == 0).int().tolist()
    assert [row[:8] for row in visible[:5]] == [
        [1, 1, 1, 1, 0, 0, 0, 0],  # slot 2, position 3: its columns 0-3
        [1, 1, 1, 1, 1, 0, 0, 0],  # position 4
        [0, 0, 0, 0, 0, 1, 0, 0],  # slot 0, position 0
        [0, 0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1, 1, 1],
    ]
    assert not any(any(row[8:]) for row in visible)
    assert not any(any(row) for row in visible[5:])  # padding tokens see nothing


def test_varlen_prefill_describes_each_chunk_in_place():
    """The variable-length description of a packed prefill: each chunk's queries, where its
    slot starts in the flat store and how many of its columns it reads; padding tokens form
    one more sequence and write to slot 0's trash column."""
    from inference.engine.slot_attention import reference_varlen

    store = SlotKVCache(1, 1, 2, torch.float32, torch.device("cpu"), slots=4, max_len=8)
    cache, att, positions = store.packed_varlen(reference_varlen, [(2, 3, 2), (0, 0, 3)])
    assert positions[0, :5].tolist() == [3, 4, 0, 1, 2] and positions.shape[1] == 64
    assert cache.write_index[:5].tolist() == [2 * 9 + 3, 2 * 9 + 4, 0, 1, 2]
    assert set(cache.write_index[5:].tolist()) == {8}
    assert att.cu_q.tolist() == [0, 2, 5, 64]
    assert att.cu_k.tolist() == [18, 0, 0, 36]
    assert att.used_k.tolist() == [5, 3, 36]  # padding: 59 tokens, at most the whole store (36 rows)
    assert (att.max_q, att.max_k, att.causal) == (59, 36, True)
    assert not cache.reads


def test_varlen_decode_rows_read_their_own_length():
    from inference.engine.slot_attention import reference_varlen

    store = SlotKVCache(1, 1, 2, torch.float32, torch.device("cpu"), slots=4, max_len=8)
    att = store.decode_attention(reference_varlen, 3, torch.tensor([[5], [0], [-1]]), 8)
    assert att.cu_q.tolist() == [0, 1, 2, 3] and att.cu_k.tolist() == [0, 9, 18, 27]
    assert att.used_k.tolist() == [6, 1, 1]  # a padding row reads one column
    assert (att.max_q, att.max_k, att.causal) == (1, 8, False)


def test_reference_kernel_matches_dense_attention_with_a_bottom_right_causal_mask():
    """The contract the CUDA kernel is checked against at start-up, checked itself against a
    dense masked SDPA over the same keys (grouped-query heads included)."""
    import torch.nn.functional as F

    from inference.engine.slot_attention import check_kernel, reference_varlen

    g = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, stride = 4, 2, 8, 16
    k = torch.randn(3 * stride, kv_heads, dim, generator=g)
    v = torch.randn(3 * stride, kv_heads, dim, generator=g)
    q = torch.randn(7, heads, dim, generator=g)
    # sequence 0: 3 queries, slot 1, 10 keys used; sequence 1: 4 queries, slot 0, 4 keys used
    i32 = dict(dtype=torch.int32)
    out = reference_varlen(q, k, v, torch.tensor([0, 3, 7], **i32), torch.tensor([stride, 0, 48], **i32),
                           torch.tensor([10, 4], **i32), 4, 10, True, dim ** -0.5)
    for (q0, q1), (k0, n) in zip([(0, 3), (3, 7)], [(stride, 10), (0, 4)]):
        kk = k[k0:k0 + n].repeat_interleave(2, 1).transpose(0, 1)
        vv = v[k0:k0 + n].repeat_interleave(2, 1).transpose(0, 1)
        rows = q1 - q0
        mask = torch.tensor([[j <= i + n - rows for j in range(n)] for i in range(rows)])
        want = F.scaled_dot_product_attention(q[q0:q1].transpose(0, 1), kk, vv, attn_mask=mask).transpose(0, 1)
        assert torch.allclose(out[q0:q1], want, atol=1e-5)
    assert check_kernel(reference_varlen, torch.device("cpu"), torch.float32, 4, 2, 8) == 0.0


def test_penalised_rows_see_every_token_before_the_next_step(tiny_model_dir):
    """A presence penalty needs the full history, so such rows never run a step ahead: with
    and without overlapping steps the same greedy, penalised tokens come out, and a row
    finishing at its limit gets exactly its tokens (the step computed past it is dropped)."""
    def run(overlap: bool):
        return _run(_engine(tiny_model_dir, max_batch=4, overlap=overlap), PROMPTS, NEW_TOKENS, True,
                    presence_penalty=lambda i: 1.5 if i % 2 else 0.0)

    overlapped, plain = run(True), run(False)
    assert overlapped == plain
    assert [len(t) for t in overlapped] == NEW_TOKENS
    assert len(set(overlapped[1])) == len(overlapped[1])  # the penalty acted: no token twice in row 1


def test_sampling_draws_what_multinomial_draws_without_reading_the_device():
    """The draw is ``torch.multinomial``'s own one-sample draw (same generator, same picks),
    minus its validity check, which would make every decode step wait for the device."""
    from inference.engine.sampling import _draw

    probs = torch.softmax(torch.randn(64, 300, generator=torch.Generator().manual_seed(1)), -1)
    a, b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(_draw(probs, a), torch.multinomial(probs, 1, generator=b).squeeze(1))
    many = _draw(torch.tensor([[0.2, 0.5, 0.3]]).repeat(40000, 1), torch.Generator().manual_seed(0))
    assert torch.allclose(torch.bincount(many, minlength=3) / 40000, torch.tensor([0.2, 0.5, 0.3]), atol=0.01)


def test_decode_steps_take_the_cheaper_attention_by_the_measured_costs(model_dir, reference, monkeypatch):
    """Where the start-up timings say so (CUDA; injected here), a decode step reads the
    store with one masked call over the padded width instead of the variable-length kernel:
    with small batches made cheap for the masked call and large ones for the kernel, both
    kinds run in one mixed batch, and the tokens are still transformers' own."""
    from inference.engine.transformers_cb import DecodeCost

    def costs(engine):  # masked costs 1 at batch 1-2, 100 above; variable-length always 10
        return {rows: DecodeCost(10.0, 0.0, {w: 1.0 if rows <= 2 else 100.0 for w in engine.width_buckets})
                for rows in engine.batch_buckets}

    monkeypatch.setattr(TransformersEngine, "_time_decode_attention", costs)
    monkeypatch.setattr(TransformersEngine, "TIMED_DEVICES", ("cuda", "cpu"))
    kinds = []
    engine = _engine(model_dir, max_batch=3, bucketed=True, max_prefill_tokens=16, attention="varlen")
    shape = engine._decode_shape
    engine._decode_shape = lambda *a: kinds.append(shape(*a)) or kinds[-1]
    together = _run(engine, PROMPTS, NEW_TOKENS, True)
    assert together == reference
    assert {(rows <= 2, varlen) for rows, _, varlen in kinds} == {(True, False), (False, True)}


def test_start_up_timings_cover_every_bucket_and_width(tiny_model_dir):
    """The timing the engine runs on CUDA at start-up, run here on the CPU with the
    reference kernel: a cost line for the variable-length kernel and a masked cost per
    width, for every batch bucket; a step then compares the two for its own rows."""
    engine = _engine(tiny_model_dir, max_batch=4, attention="varlen", bucketed=True)
    _load(engine)
    with torch.inference_mode():
        costs = engine._time_decode_attention()
    assert sorted(costs) == engine.batch_buckets
    for cost in costs.values():
        assert sorted(cost.masked) == engine.width_buckets and cost.base >= 0 and cost.per_token >= 0
    engine._decode_costs = costs
    rows, width, varlen = engine._decode_shape(3, 300, 900)
    cost = costs[4]
    assert (rows, varlen) == (4, cost.masked_ms(512) > cost.varlen_ms(900))
    assert width == 512  # the variable-length kernel's bound is max_model_len; the masked width is the bucket


def test_static_prefill_layout_pads_tokens_and_sequences():
    """A captured prefill step has fixed shapes: the chunks, then the padding tokens as one
    sequence that reads the store's first rows, then empty sequences up to the fixed count."""
    store = SlotKVCache(1, 1, 2, torch.float32, torch.device("cpu"), slots=4, max_len=8)
    positions, write, meta, ends = store.packed_layout([(2, 3, 2), (0, 0, 3)], tokens=8, seqs=4)
    assert positions == [3, 4, 0, 1, 2, 0, 0, 0]
    assert write == [21, 22, 0, 1, 2, 8, 8, 8]  # padding: slot 0's trash column
    cu_q, cu_k, used = meta[:5], meta[5:10], meta[10:]
    assert cu_q == [0, 2, 5, 8, 8] and cu_k == [18, 0, 0, 0, 36] and used == [5, 3, 3, 0]
    assert ends == [1, 4, 0, 0]
    with pytest.raises(ValueError):
        store.packed_layout([(0, 0, 9)], tokens=8, seqs=4)  # more tokens than the bucket


def test_every_prefill_bucket_runs_with_padding_only_content(tiny_model_dir):
    """What a prefill graph capture stages: no chunks, every token padding, for each token
    bucket. The step runs, its logits have the fixed shape, and the padding writes land in
    the trash column only (an H200 start-up once failed here: the padding was counted
    from the bucket, not from the chunks, and came out empty)."""
    engine = _engine(tiny_model_dir, max_batch=2, attention="varlen", bucketed=True, max_prefill_tokens=512,
                     max_model_len=256)
    _load(engine)
    assert engine._static_prefill and engine.prefill_buckets[-1] == 512  # the step budget, above the context
    kv = engine._kv
    before = [k.clone() for k in kv.keys]
    with torch.inference_mode():
        for bucket in engine.prefill_buckets:
            assert engine._stage_prefill([], bucket) == bucket
            logits = engine._prefill_static(bucket)
            assert logits.shape == (engine._pf_seqs, engine.model.config.vocab_size)
            assert torch.isfinite(logits).all()
    for old, new in zip(before, kv.keys):  # [slots, columns, heads, dim]; the trash column is the last
        assert torch.equal(old[:, :kv.trash], new[:, :kv.trash])


def test_a_prefill_step_longer_than_the_context_is_padded_like_any_other(tiny_model_dir):
    """Several prompts share a step, so a step's tokens may exceed the context length: the
    static buckets reach the step budget, and two 200-token prompts of a 256-token model
    prefilled together (a 512-token bucket) give the logits each gives alone."""
    engine = _engine(tiny_model_dir, max_batch=2, attention="varlen", bucketed=True, max_prefill_tokens=512,
                     max_model_len=256)
    _load(engine)
    assert engine.prefill_buckets[-1] == 512 > engine._max_model_len
    g = torch.Generator().manual_seed(11)
    a, b = (torch.randint(3, 400, (200,), generator=g).tolist() for _ in range(2))
    with torch.inference_mode():
        together = engine._prefill_forward([(0, a, 0), (1, b, 0)])[:2].clone()
        alone = torch.cat([engine._prefill_forward([(0, a, 0)])[:1], engine._prefill_forward([(1, b, 0)])[:1]])
    assert engine.prefill_buckets == list(range(32, 513, 32))  # every 32 tokens up to the step budget
    assert bucket_for(400, engine.prefill_buckets) == 416 > engine._max_model_len
    assert torch.allclose(together, alone, atol=1e-4, rtol=1e-4)


def test_an_unpadded_varlen_prefill_has_no_empty_sequence():
    store = SlotKVCache(1, 1, 2, torch.float32, torch.device("cpu"), slots=4, max_len=80)
    from inference.engine.slot_attention import reference_varlen

    _, att, positions = store.packed_varlen(reference_varlen, [(1, 0, 64)])
    assert att.cu_q.tolist() == [0, 64] and att.cu_k.tolist() == [81, 324] and att.used_k.tolist() == [64]
    assert positions.shape[1] == 64


def test_the_engine_falls_back_to_unpadded_prefill_when_the_static_shapes_fail(tiny_model_dir, monkeypatch):
    """The static prefill shapes (what prefill graphs capture) are checked at start-up like
    everything else; if they fail, the engine serves with the packed prefill it had before."""
    def broken(self, bucket):
        raise RuntimeError("kernel rejected the static shapes")

    monkeypatch.setattr(TransformersEngine, "_prefill_static", broken)
    engine = _engine(tiny_model_dir, max_batch=2, attention="varlen", bucketed=True)
    out = _run(engine, PROMPTS[:2], NEW_TOKENS[:2], True)
    assert [len(t) for t in out] == NEW_TOKENS[:2]
    assert engine.prefill_path == "eager (static shapes failed the start-up check)"


def test_a_step_uses_the_attention_whose_graphs_were_captured(tiny_model_dir):
    """If one attention's decode graphs were left out at capture (a failure or a replay that
    disagreed), steps take the other even where its measured cost is higher."""
    from inference.engine.transformers_cb import DecodeCost

    engine = _engine(tiny_model_dir, max_batch=4, attention="varlen", bucketed=True)
    _load(engine)
    engine._decode_costs = {r: DecodeCost(10.0, 0.0, {w: 1.0 for w in engine.width_buckets})
                            for r in engine.batch_buckets}  # masked always cheaper
    assert engine._decode_shape(3, 300, 600) == (4, 512, False)
    engine._graph_kinds = {True}  # only the variable-length graphs were captured
    assert engine._decode_shape(3, 300, 600) == (4, 512, True)
    engine._graph_kinds = {False}
    assert engine._decode_shape(3, 300, 600) == (4, 512, False)


def test_the_two_newest_paths_can_be_switched_off(model_dir, reference, monkeypatch):
    """``--no-attention-choice`` (every decode step on the variable-length kernel, no start-up
    timing) and ``--no-prefill-graphs`` (unpadded eager prefill) bring back the engine that
    the H200 run measured; tokens stay transformers' own."""
    from inference.engine.transformers_cb import DecodeCost

    timed = []
    monkeypatch.setattr(TransformersEngine, "TIMED_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(TransformersEngine, "_time_decode_attention",
                        lambda self: timed.append(1) or {r: DecodeCost(10.0, 0.0, {w: 1.0 for w in self.width_buckets})
                                                         for r in self.batch_buckets})
    engine = _engine(model_dir, max_batch=3, bucketed=True, max_prefill_tokens=16, attention="varlen",
                     attention_choice=False, prefill_graphs=False)
    kinds = []
    shape = engine._decode_shape
    engine._decode_shape = lambda *a: kinds.append(shape(*a)) or kinds[-1]
    assert _run(engine, PROMPTS, NEW_TOKENS, True) == reference
    assert not timed and engine._decode_costs is None and engine._decode_kinds() == [True]
    assert {varlen for _, _, varlen in kinds} == {True}
    assert engine.prefill_path == "eager" and not engine._static_prefill


def test_a_device_fault_fails_the_engine_for_good_and_says_why(tiny_model_dir, monkeypatch):
    """A CUDA fault cannot happen on this machine, so a decode step is made to raise the
    error PyTorch raises for one (``AcceleratorError``, e.g. an illegal memory access).
    The running request ends with an error, the engine reports itself failed (``/healthz``
    fails on it, so a liveness probe restarts the node) and refuses new requests with the
    reason; an ordinary step failure (here: out of memory) fails only its batch."""
    from inference.engine.base import EngineError, EngineNotReady

    engine = _engine(tiny_model_dir, max_batch=2)
    fault = {"exc": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")}
    real = TransformersEngine._decode_step

    def step(self):
        if fault["exc"] is not None:
            exc, fault["exc"] = fault["exc"], None
            raise exc
        return real(self)

    monkeypatch.setattr(TransformersEngine, "_decode_step", step)

    async def ask():
        req = GenerationRequest(f"r{id(object())}", "m", [{"role": "user", "content": "hi"}],
                                SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
        async for _ in await engine.generate(req):
            pass

    async def main():
        await engine.start()
        try:
            with pytest.raises(EngineError, match="out of memory"):
                await ask()
            assert engine.state().failed is None and engine.state().ready
            await ask()  # the next request is served
            fault["exc"] = torch.AcceleratorError("CUDA error: an illegal memory access was encountered\nmore")
            with pytest.raises(EngineError, match="illegal memory access"):
                await ask()
            state = engine.state()
            assert not state.ready and "illegal memory access was encountered); only a restart" in state.failed
            with pytest.raises(EngineNotReady, match="the device failed"):
                await ask()
        finally:
            await engine.stop()

    asyncio.run(main())


def test_a_slots_pages_are_its_columns_read_in_place():
    """The paged decode kernels read the store through overlapping pages: a slot's page j is
    its columns j×PAGE onwards, wherever the slot starts (slots here are 301 columns wide, so
    pages straddle slots), and the last slot's last page stays inside the allocation."""
    from inference.engine.slot_attention import PAGE, paged_view

    store = SlotKVCache(1, 2, 4, torch.float32, torch.device("cpu"), slots=3, max_len=300)
    store.keys[0].copy_(torch.randn(store.keys[0].shape))
    pages = paged_view(store.flat_keys[0])
    assert store.page_table.tolist() == [[0, PAGE], [301, 301 + PAGE], [602, 602 + PAGE]]
    for slot in range(3):
        for j, row in enumerate(store.page_table[slot].tolist()):
            cols = store.keys[0][slot, j * PAGE:(j + 1) * PAGE]
            assert torch.equal(pages[row][:len(cols)], cols)
    assert pages[store.page_table[2, 1]].shape == (PAGE, 2, 4)  # reads spare rows, not past the storage


def test_the_start_up_check_catches_a_kernel_that_reads_the_wrong_pages():
    """The reference through the page table agrees with the plain reference exactly (rows
    crossing page boundaries, grouped-query heads); a kernel whose table is one row off is
    caught by the same check the engine runs on every paged kernel at start-up."""
    from inference.engine.slot_attention import check_kernel, reference_paged

    cpu = torch.device("cpu")
    assert check_kernel(reference_paged, cpu, torch.float32, 4, 2, 8) == 0.0

    def off_by_one(*args, pages=None):
        return reference_paged(*args, pages=pages + 1)

    assert check_kernel(off_by_one, cpu, torch.float32, 4, 2, 8, decode_only=True) > 0.1


def test_decode_steps_read_through_the_page_table_token_for_token(model_dir, reference, monkeypatch):
    """On CUDA the engine checks the paged decode kernels at start-up and keeps those that
    agree with the reference. Here the candidates are one that reads the wrong pages and the
    reference read through the page table: the wrong one is left out, every decode step
    reads through the table, and the tokens are transformers' own, alone and in a batch."""
    from inference.engine import slot_attention

    def wrong(*args, pages=None):
        return slot_attention.reference_paged(*args, pages=None if pages is None else pages + 3)

    used = []

    def paged(*args, pages=None):
        used.append(pages is not None)
        return slot_attention.reference_paged(*args, pages=pages)

    wrong.label, paged.label = "wrong pages", "reference through the page table"
    monkeypatch.setattr(slot_attention, "decode_kernels", lambda *args: [wrong, paged])
    kw = dict(max_batch=3, bucketed=True, max_prefill_tokens=16, attention="varlen")
    engine = _engine(model_dir, **kw)
    assert _run(engine, PROMPTS, NEW_TOKENS, False) == reference
    assert engine._decode_candidates == [paged]
    assert engine.attention_path.endswith("decode: reference through the page table at batch 1-3")
    assert used and all(used)  # decode steps only, each with its page table
    assert _run(_engine(model_dir, **kw), PROMPTS, NEW_TOKENS, True) == reference


def test_start_up_timing_keeps_the_fastest_decode_kernel_per_batch(tiny_model_dir, monkeypatch):
    """Every kernel that passed its check is timed at every batch bucket and the fastest is
    kept for it: a kernel made slow (a sleep, on the CPU) is never picked."""
    import time as _time

    from inference.engine import slot_attention

    def slow(*args, pages=None):
        _time.sleep(0.02)
        return slot_attention.reference_paged(*args, pages=pages)

    slow.label = "slow"
    monkeypatch.setattr(slot_attention, "decode_kernels", lambda *args: [slow, slot_attention.reference_paged])
    engine = _engine(tiny_model_dir, max_batch=4, attention="varlen", bucketed=True)
    _load(engine)
    assert engine._decode_candidates == [slow, slot_attention.reference_paged]
    with torch.inference_mode():
        costs = engine._time_decode_attention()
    assert sorted(engine._decode_kernels) == engine.batch_buckets
    assert slow not in engine._decode_kernels.values()
    assert {c.kernel for c in costs.values()} <= {"reference through the page table (SDPA per sequence)",
                                                 "reference (SDPA per sequence)"}



TRITON_CHECK = """
import os, sys
os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, sys.argv[1])
import torch
from inference.engine import slot_attention, triton_decode
cpu = torch.device("cpu")
errors = [slot_attention.check_kernel(k, cpu, torch.float32, 4, 4, 16, decode_only=True) for k in triton_decode.kernels()]
triton_decode._programs = lambda device: 1024  # many key ranges per row, most of them empty for short rows
assert triton_decode.splits_for(4, 4, 613, 32, 1024) == 20
errors += [slot_attention.check_kernel(k, cpu, torch.float32, 4, 4, 16, decode_only=True) for k in triton_decode.kernels()]
# fixed key ranges of 64: up to 10 programs for the longest row, one for the shortest
errors.append(slot_attention.check_kernel(triton_decode.make_kernel(32, 1, 64, 2), cpu, torch.float32, 4, 4, 16,
                                          decode_only=True))
# heads launched next to each other (on the row-sum and the matrix-unit forms), with many key ranges
first = [triton_decode.make_kernel(32, 1, heads_first=True), triton_decode.make_kernel(32, 2, 0, 0, True, True)]
errors += [slot_attention.check_kernel(k, cpu, torch.float32, 4, 4, 16, decode_only=True) for k in first]
print("heads first", len(first), first[1].label)
try:
    triton_decode.make_kernel(32, 1, 48)
    print("range accepted")
except ValueError as exc:
    print("range refused:", exc)
# grouped-query heads: 2 and 4 query heads per key/value head
errors += [slot_attention.check_kernel(triton_decode.make_kernel(32, 1), cpu, torch.float32, 4, kv, 16,
                                       decode_only=True) for kv in (2, 1)]
errors.append(slot_attention.check_kernel(triton_decode.make_kernel(16, 1, 64), cpu, torch.float32, 4, 2, 16,
                                          decode_only=True))
try:
    slot_attention.check_kernel(triton_decode.make_kernel(), cpu, torch.float32, 3, 2, 16, decode_only=True)
    print("uneven groups accepted")
except ValueError as exc:
    print("uneven groups refused:", exc)
# the matrix-unit variants (among kernels() above), over an 8-bit store too; grouped-query models leave them out
mma = [k for k in triton_decode.kernels() if "matrix units" in k.label]
errors += [slot_attention.check_kernel(k, cpu, torch.float32, 4, 4, 16, decode_only=True,
                                       store_dtype=torch.float8_e4m3fn) for k in mma]
print("matrix units", len(mma), "grouped-query variants", len(triton_decode.kernels(2)), "of", len(triton_decode.kernels()))
try:
    slot_attention.check_kernel(mma[0], cpu, torch.float32, 4, 2, 16, decode_only=True)
    print("grouped heads on the matrix units accepted")
except ValueError as exc:
    print("grouped heads on the matrix units refused:", exc)
# the step's own keys/values written by the kernel (``new``): every variant above ran it in its
# check; a kernel that claims to and does not (or attends without them) fails the check
plain = triton_decode.make_kernel(32, 1)
def ignores_new(*args, new=None, **kwargs):
    return plain(*args, **kwargs)
ignores_new.writes_new = True
def forgets_to_store(*args, new=None, **kwargs):
    if new is None:
        return plain(*args, **kwargs)
    store_k, store_v = args[1].clone(), args[2].clone()
    out = plain(*args, **kwargs, new=new)
    args[1].copy_(store_k); args[2].copy_(store_v)
    return out
forgets_to_store.writes_new = True
print("writes", all(k.writes_new for k in triton_decode.kernels()),
      "ignored", slot_attention.check_kernel(ignores_new, cpu, torch.float32, 4, 4, 16, decode_only=True) > 0.1,
      "not stored", slot_attention.check_kernel(forgets_to_store, cpu, torch.float32, 4, 4, 16, decode_only=True) > 0.1)
print("errors", max(errors))
"""


def test_the_triton_decode_kernel_matches_the_reference_under_the_interpreter():
    """The Triton decode kernel, run by Triton's interpreter on the CPU, against the
    reference on the start-up check's store (rows of 1 to 612 keys), with one key range
    per row, with up to 20 (most of them empty for the short rows, merged away) and with
    fixed 64-key ranges, launched with a sequence's heads next to each other, and with 2 and
    4 query heads per key/value head (every variant with one key range per row, where the
    programs write the output themselves, and with many, merged); the matrix-unit
    variants over a full and an 8-bit store; it refuses a range that is not whole tiles,
    query heads that do not split into whole groups, and grouped-query heads on the matrix
    units (grouped-query models leave those variants out). Every variant's check also runs a
    decode step whose new keys and values the kernel writes into the store itself and
    attends to (a padding row to its new key alone): the same output and the same store as
    writing them first; a kernel that claims to and ignores them, or attends to them
    without storing them, fails the check."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", TRITON_CHECK, str(root)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "uneven groups refused: the Triton decode kernel needs whole groups of query heads" in out.stdout
    assert "range refused: the key range (48) must be a multiple of the tile (32)" in out.stdout
    assert "matrix units 8 grouped-query variants 4 of 12" in out.stdout
    assert "heads first 2 Triton decode (matrix units, 32-key tiles, 2 warps, heads first)" in out.stdout
    assert ("grouped heads on the matrix units refused: the matrix-unit decode kernel needs one key/value head "
            "per query head, not 4 over 2") in out.stdout
    assert "writes True ignored True not stored True" in out.stdout
    assert float(out.stdout.split("errors ")[1]) < 1e-5


def test_the_engine_account_says_how_busy_the_device_was_while_there_was_work():
    """The device's own time per decode step and prefill chunk, and its share of the time the
    engine had work: the interval less the time the engine waited for requests. The spans
    come from CUDA events on a GPU (this machine has none, so they are given here); a CPU
    engine's account has no device part."""
    from inference.engine.transformers_cb import StepStats

    stats = StepStats()
    stats.add_decode(4, 4, 0.001, 0.001, 0.002)
    stats.add_decode(4, 4, 0.001, 0.001, 0.002)
    stats.add_device({"decode": (2, 0.030)})
    stats.add_device({"decode": (1, 0.012), "prefill": (1, 0.020)})
    stats.idle_s = 6.0
    assert stats.summary(10.0).endswith("; device time: decode 14.00 ms per step, prefill 20.00 ms per chunk, "
                                        "busy 1.6% of the 4.0 s with work")
    cpu = StepStats()
    cpu.add_decode(4, 4, 0.001, 0.001, 0.002)
    assert "device time" not in cpu.summary(10.0)


def test_serve_passes_the_prefill_budget_to_the_engine_and_refuses_a_tiny_one(tiny_model_dir):
    """``--max-prefill-tokens`` reaches the engine the node builds (2048 without it); a
    budget below 16 tokens is refused in one line."""
    import argparse

    from contracts.config import ConfigError
    from inference import cli
    from inference.engine import registry

    def config(*flags):
        argv = ["serve", "--engine", "transformers", "--model", str(tiny_model_dir), *flags]
        parser = argparse.ArgumentParser()
        cli.add_parser(parser.add_subparsers(), "serve", "serve", argv)
        return cli.config_from_args(parser.parse_args(argv))

    cfg = config("--max-prefill-tokens", "64")
    engine = registry.get("transformers").build(cfg.engine_options, cfg)
    assert engine.max_prefill_tokens == 64
    assert registry.get("transformers").build(config().engine_options, config()).max_prefill_tokens == 2048
    with pytest.raises(ConfigError, match="^--max-prefill-tokens must be at least 16$"):
        config("--max-prefill-tokens", "8")


KERNEL_WRITES_CHECK = r"""
import json
from inference.engine import triton_decode
from inference.engine.slot_attention import reference_varlen
from inference.engine.transformers_cb import TransformersEngine
from tests.node.test_engine_slots import _run

kernels = [triton_decode.make_kernel(32, 1)]
if sys.argv[2] == "1":  # one key/value head per query head: the matrix-unit form the 7B shape runs
    kernels.append(triton_decode.make_kernel(32, 2, 0, 0, True, True))
out, calls = {}, {"new": 0, "plain": 0, "reordered": 0}


def counted(kernel):
    def run(*args, new=None, order=None, **kwargs):
        calls["new" if new is not None else "plain"] += 1
        calls["reordered"] += order is not None and order.tolist() != sorted(order.tolist())
        return kernel(*args, new=new, order=order, **kwargs)
    run.label, run.writes_new, run.takes_order = kernel.label, True, True
    return run


def writes_first(kernel):  # the same kernel without ``writes_new``: the keys/values written before it
    def run(*args, **kwargs):
        calls["plain"] += 1
        return kernel(*args, **kwargs)
    run.label = kernel.label
    return run


forms = {"reference": lambda: reference_varlen}
for i, kernel in enumerate(kernels):
    forms[f"{i} writes itself"] = lambda kernel=kernel: counted(kernel)
    forms[f"{i} written first"] = lambda kernel=kernel: writes_first(kernel)
for name, make in forms.items():
    engine = TransformersEngine(sys.argv[1], device="cpu", max_model_len=256, max_batch=4, max_prefill_tokens=16,
                                attention="varlen", bucketed=True)
    engine.record_tokens = True
    kernel = make()
    engine._decode_kernel = lambda rows, kernel=kernel: kernel
    before = dict(calls)
    # the shortest prompt first: it decodes in row 0 while the longer ones join after it
    tokens = _run(engine, ["hi", "请帮我查一下订单 12345 的状态。", "How do I reset my password?"], [8, 9, 6], True)
    out[name] = {"tokens": tokens, "calls": {k: calls[k] - before[k] for k in calls}}
print(json.dumps(out))
"""


def test_the_decode_kernel_writes_the_steps_keys_and_values_itself(layout_model_dir):
    """The CUDA path's decode steps on the CPU (bucketed, variable-length, three requests of
    different lengths in one batch with padding rows, prompts over several prefill steps),
    their attention the Triton decode kernel under the interpreter: with the kernel writing
    each step's new keys and values into the store itself, and with the same kernel after
    the keys and values were written for it, the same greedy tokens as the reference kernel,
    for the Llama layout (row-sum and matrix-unit forms) and Qwen2's grouped-query one; the
    kernel really got the new keys (every decode layer call) in the first form, never in
    the second, and its rows in the engine's order, longest first, not always the identity."""
    from tests.node.interpreted import run_json

    mha = "1" if "qwen2" not in str(layout_model_dir) else "0"
    got = run_json(KERNEL_WRITES_CHECK, str(layout_model_dir), mha)
    want = got.pop("reference")["tokens"]
    assert [len(t) for t in want] == [8, 9, 6]
    for name, form in got.items():
        assert form["tokens"] == want, name
        if name.endswith("writes itself"):
            assert form["calls"]["new"] > 0 and form["calls"]["plain"] == 0, (name, form["calls"])
            assert form["calls"]["reordered"] > 0, (name, form["calls"])  # the longest rows went first
        else:
            assert form["calls"]["plain"] > 0 and form["calls"]["new"] == 0, (name, form["calls"])
