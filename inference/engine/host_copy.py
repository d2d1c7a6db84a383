"""Host-to-device copies that do not wait for the device.

Why: a copy from ordinary (pageable) host memory to the GPU first waits for everything
already queued on the stream to finish. The engine queues the next decode step (and a
prefill's kernels) while the previous step is still running, so one small ``torch.tensor(
..., device="cuda")`` in the step's path would stall the host until the device is idle and
undo that overlap. From pinned (page-locked) memory the copy is queued like a kernel.
PyTorch's pinned-memory allocator caches its blocks and keeps each one until the copies
that read it have run, so a per-step ``pin_memory()`` is cheap and safe.
"""
from __future__ import annotations

import torch


def upload(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``values`` (a list, possibly nested, or a CPU tensor) as a tensor on ``device``,
    queued without waiting for the device."""
    t = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
