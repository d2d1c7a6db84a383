"""Sampling runs on the device without waiting for it.

The engine launches decode step K+1 before it reads step K's tokens, so the device always
has the next step queued. One operation that waits for the device anywhere in the step
(reading a device value on the host, or copying from pageable host memory) undoes that:
on an H200 the EOS suppression of ``ignore_eos`` requests, written as an ``index_put_``,
waited at every step, and the device sat idle 40-60 % of the time while the host
prepared the next step. These tests run the sampling code on the CPU under a dispatch
mode that records every ATen operation it calls, and fail on any operation that waits
for a CUDA device when run there. The CPU cannot observe the wait itself; the list of
operations is what stands in for it (each entry says why it waits).
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from inference.engine.base import SamplingParams
from inference.engine.sampling import _suppress, sample_next_tokens

#: ATen operations that make the host wait for a CUDA device.
WAITS = {
    "aten::index_put_": "assignment through index tensors; a Python number as the value is copied to the "
                        "device with a blocking copy (every step on an H200, torch 2.11)",
    "aten::_index_put_impl_": "the same, by its implementation name",
    "aten::index.Tensor": "indexing with tensors; with a host list it copies the list from pageable memory",
    "aten::bincount": "sizes its output from the largest value, read on the host",
    "aten::nonzero": "its output size is read on the host",
    "aten::masked_select": "its output size is read on the host",
    "aten::_local_scalar_dense": ".item() / bool() of a device value",
    "aten::multinomial": "checks its input on the host",
    "aten::unique": "its output size is read on the host",
    "aten::is_nonzero": "bool() of a device value",
    "aten::equal": "returns a host bool",
}


class Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func._schema.name + ("." + func._overloadname if func._overloadname not in ("", "default") else ""))
        return func(*args, **(kwargs or {}))


def _waits(fn) -> list[str]:
    with Recorder() as rec:
        fn()
    names = {op.split(".")[0] if op.split(".")[0] in WAITS else op for op in rec.ops}
    return sorted(n for n in names if n in WAITS)


CASES = {
    "greedy, EOS suppressed for every row": dict(temperature=0.0, ignore_eos=True),
    "temperature, EOS suppressed for some rows (min_tokens)": dict(temperature=0.7, min_tokens=3),
    "top_p": dict(temperature=0.9, top_p=0.8),
    "penalties": dict(temperature=0.7, presence_penalty=1.0, frequency_penalty=0.5),
    "greedy and sampled rows mixed": None,
}


@pytest.mark.parametrize("case", list(CASES))
def test_sampling_calls_nothing_that_waits_for_the_device(case):
    """Every branch of ``sample_next_tokens`` (greedy, temperature, top-p, penalties, EOS
    suppression for all rows and for some) uses only operations that queue on the device."""
    batch, vocab = 6, 50
    logits = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(2))
    if CASES[case] is None:
        params = [SamplingParams(temperature=0.0 if i % 2 else 0.8, max_tokens=8, ignore_eos=i < 3)
                  for i in range(batch)]
    else:
        params = [SamplingParams(max_tokens=8, **CASES[case]) for _ in range(batch)]
    generated = [[1, 2, 2, 5][: i % 5] for i in range(batch)]
    assert _waits(lambda: sample_next_tokens(logits.clone(), params, generated, [7, 9], to_host=False)) == []


def test_the_recorder_sees_an_operation_that_waits():
    """The check itself can fail: the assignment the suppression used to be is caught."""
    logits = torch.zeros(3, 10)
    rows, cols = torch.tensor([[0], [2]]), torch.tensor([1, 4])

    def old():
        logits[rows, cols] = float("-inf")

    assert _waits(old) == ["aten::index_put_"]


@pytest.mark.parametrize("rows", [[0, 1, 2, 3], [1, 3], [2]])
def test_suppression_sets_exactly_the_chosen_rows_and_tokens_to_minus_infinity(rows):
    logits = torch.randn(4, 12, generator=torch.Generator().manual_seed(4))
    got = logits.clone()
    _suppress(got, rows, [3, 11])
    want = logits.clone()
    for r in rows:
        want[r, [3, 11]] = float("-inf")
    assert torch.equal(got, want)


def test_eos_is_never_chosen_while_suppressed_and_penalties_still_count_repeats():
    """Behaviour around the rewritten parts: a suppressed EOS is never sampled even when it
    is the only likely token, and a frequency penalty lowers a repeated token by its count."""
    logits = torch.full((4, 20), -5.0)
    logits[:, 7] = 10.0  # EOS dominates
    params = [SamplingParams(temperature=0.7, max_tokens=8, ignore_eos=True) for _ in range(4)]
    for seed in range(5):
        tokens = sample_next_tokens(logits.clone(), params, [[]] * 4, [7], torch.Generator().manual_seed(seed))
        assert 7 not in tokens.tolist()
    plain = torch.zeros(1, 20)
    plain[0, 3], plain[0, 4] = 2.0, 1.5  # token 3 seen twice: 2.0 - 2 * 0.5 = 1.0 < 1.5
    chosen = sample_next_tokens(plain, [SamplingParams(temperature=0.0, max_tokens=8, frequency_penalty=0.5)],
                                [[3, 3]], [])
    assert chosen.tolist() == [4]
