"""The in-place KV buffer keeps exactly what the old concatenating cache kept.

A reference batch is kept the simple way (a list of per-row key sequences, left-padded on
read); random joins, decode steps and departures are applied to both, and after each one
every live row's visible keys and values, and the mask, must agree.
"""
from __future__ import annotations

import random

import pytest
import torch

from inference.engine.kv_buffer import BatchKVBuffer

LAYERS, HEADS, DIM = 2, 2, 4


def _visible(buf: BatchKVBuffer, layer: int) -> list[torch.Tensor]:
    """Each live row's unmasked keys (in column order), and the same for values."""
    m = buf.mask[:buf.rows, buf.start:buf.end].bool()
    k = buf.keys[layer][:buf.rows, :, buf.start:buf.end]
    v = buf.values[layer][:buf.rows, :, buf.start:buf.end]
    return [torch.cat([k[r][:, m[r]], v[r][:, m[r]]]) for r in range(buf.rows)]


def _kv(rows: int, width: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, HEADS, width, DIM, generator=g), torch.randn(rows, HEADS, width, DIM, generator=g))
            for _ in range(LAYERS)]


@pytest.mark.parametrize("seed", range(6))
def test_random_joins_steps_and_departures_match_the_reference(seed):
    rng = random.Random(seed)
    buf = BatchKVBuffer(LAYERS, HEADS, DIM, torch.float32, torch.device("cpu"), row_step=4, col_slack=8)
    ref: list[list[torch.Tensor]] = []  # per live row, per layer: [2*HEADS, tokens, DIM]
    for step in range(120):
        op = rng.random()
        if op < 0.25 or not ref:  # join a left-padded group
            lens = [rng.randint(1, 30) for _ in range(rng.randint(1, 3))]
            w = max(lens)
            kv = _kv(len(lens), w, seed * 1000 + step)
            mask = torch.tensor([[0] * (w - n) + [1] * n for n in lens])
            buf.add_rows(kv, mask)
            for r, n in enumerate(lens):
                ref.append([torch.cat([k[r][:, w - n:], v[r][:, w - n:]]) for k, v in kv])
        elif op < 0.85:  # one decode step: the model writes one new column for every row
            mask = buf.begin_decode()
            assert mask.shape == (buf.rows, buf.width + 1) and bool(mask[:, -1].all())
            cache = buf.cache()
            new = _kv(buf.rows, 1, seed * 1000 + step)
            for layer, (k, v) in enumerate(new):
                keys, values = cache.layers[layer].update(k, v)
                assert keys.shape[-2] == buf.width + 1
                assert cache.get_seq_length(layer) == buf.width + 1
            buf.end_decode()
            for r in range(len(ref)):
                ref[r] = [torch.cat([ref[r][layer], torch.cat([new[layer][0][r], new[layer][1][r]])], dim=1)
                          for layer in range(LAYERS)]
        else:  # some rows leave
            drop = rng.sample(range(len(ref)), rng.randint(1, len(ref)))
            order = buf.remove_rows(drop)
            assert sorted(order) == [i for i in range(len(ref)) if i not in drop]
            ref = [ref[i] for i in order]
        assert buf.rows == len(ref)
        if ref:
            assert bool(buf.mask[:buf.rows, buf.start].any()), "leading all-padding column not dropped"
        for layer in range(LAYERS):
            got = _visible(buf, layer)
            for r in range(len(ref)):
                assert torch.equal(got[r], ref[r][layer]), (step, r)
        assert 0 <= buf.start <= buf.end <= buf.col_cap and buf.rows <= buf.row_cap


def test_the_buffer_grows_in_steps_not_every_token():
    """The point of the buffer: decode steps write in place; storage is reallocated only
    when the capacity runs out (every col_slack columns), not on each step."""
    buf = BatchKVBuffer(LAYERS, HEADS, DIM, torch.float32, torch.device("cpu"), col_slack=64)
    buf.add_rows(_kv(2, 10, 1), torch.ones(2, 10, dtype=torch.long))
    first = buf.keys[0].data_ptr()
    for _ in range(50):
        buf.begin_decode()
        cache = buf.cache()
        for layer in range(LAYERS):
            cache.layers[layer].update(*_kv(2, 1, 2)[layer])
        buf.end_decode()
    assert buf.keys[0].data_ptr() == first and buf.width == 60


def test_masked_slots_are_finite():
    """Padding slots are zeroed, not left uninitialised: a kernel adding -inf to NaN gives NaN."""
    buf = BatchKVBuffer(LAYERS, HEADS, DIM, torch.float32, torch.device("cpu"))
    buf.add_rows(_kv(1, 3, 1), torch.ones(1, 3, dtype=torch.long))
    buf.add_rows(_kv(1, 40, 2), torch.ones(1, 40, dtype=torch.long))
    assert all(bool(torch.isfinite(t).all()) for t in buf.keys + buf.values)


def test_bytes_per_token_counts_keys_and_values_of_every_layer():
    buf = BatchKVBuffer(30, 32, 128, torch.bfloat16, torch.device("cpu"))
    assert buf.bytes_per_token() == 2 * 30 * 32 * 128 * 2  # DeepSeek-7B: 480 KiB a token
