"""Prefill steps keep cuDNN's attention out on CUDA (a new execution plan for every key
count cost about 75 ms a step on an H200); decode steps and the CPU are left as they are.
The flags are PyTorch's process-wide SDPA switches, so this runs without a GPU."""
from __future__ import annotations

import torch

from inference.engine.transformers_cb import prefill_attention


def _flags() -> tuple[bool, bool, bool, bool]:
    b = torch.backends.cuda
    return b.cudnn_sdp_enabled(), b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled()


def test_a_cuda_prefill_may_use_every_kernel_but_cudnn_and_restores_the_switches():
    before = _flags()
    with prefill_attention(torch.device("cuda")):
        assert _flags() == (False, True, True, True)
    assert _flags() == before


def test_on_the_cpu_nothing_is_switched():
    before = _flags()
    with prefill_attention(torch.device("cpu")):
        assert _flags() == before
