"""Per-row sampling for a batch in which every request keeps its own settings.

Runs on the device the logits are on, vectorised over the batch for temperature and top-p;
penalties and EOS suppression only touch the rows that asked for them, so a batch of plain
requests pays nothing for them. Which branches run is decided from the settings on the host,
never by reading a device tensor, and the per-row settings reach the device through pinned
memory (``host_copy.upload``), so nothing here waits for the device: the engine reads the
chosen tokens when it needs them.
"""
from __future__ import annotations

from typing import Sequence

import torch

from inference.engine.base import SamplingParams
from inference.engine.host_copy import upload

try:
    from inference.engine import fused_sampling
except ImportError:  # a torch without Triton: the plain form below
    fused_sampling = None

GREEDY_BELOW = 1e-5  # a temperature this low means greedy decoding


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row, drawn with probability ``probs`` (unnormalised is fine):
    ``argmax(p / q)`` with ``q ~ Exp(1)``, the draw ``torch.multinomial`` makes for one
    sample, without its validity check, which reads a device value on the host (a wait for
    the device at every step)."""
    q = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / q).argmax(dim=-1)


def _suppress(logits: torch.Tensor, rows: list[int], token_ids: list[int]) -> None:
    """Set ``logits[rows, token_ids]`` to -inf in place, without waiting for the device.

    Assigning a Python number through index tensors (``logits[r, c] = x``) is an
    ``index_put_`` whose value is a CPU scalar, which it copies to the device with a
    blocking copy: at every decode step on an H200 (torch 2.11) the host then sat
    idle until the step it had just launched ran out, and the device waited in turn while
    the host prepared the next one (42-61 % busy in a profile of the running loop). A fill
    of whole columns, or adding a row mask of 0 and -inf to the selected columns, are
    plain kernels."""
    cols = upload(token_ids, torch.long, logits.device)
    if len(rows) == logits.shape[0]:
        logits.index_fill_(1, cols, float("-inf"))
        return
    chosen = set(rows)
    mask = upload([float("-inf") if i in chosen else 0.0 for i in range(logits.shape[0])], logits.dtype,
                  logits.device)
    logits.index_copy_(1, cols, logits.index_select(1, cols) + mask.unsqueeze(1))


def sample_next_tokens(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generated: Sequence[Sequence[int]],
    eos_token_ids: Sequence[int],
    generator: torch.Generator | None = None,
    *,
    pending: Sequence[int] | None = None,
    to_host: bool = True,
    fused: bool = True,
) -> torch.Tensor:
    """Pick one next token per row of ``logits`` ([batch, vocab]); returns a CPU LongTensor,
    or with ``to_host=False`` the tensor on the logits' device (no synchronisation).

    ``pending`` counts, per row, tokens already chosen on the device but not yet in
    ``generated`` (a decode step still in flight): they count towards ``min_tokens``. Rows
    with presence/frequency penalties need their full history, so the engine never passes
    pending tokens for them.

    Where :mod:`inference.engine.fused_sampling` runs (a CUDA device) and no row asks for
    top-p or a penalty, one kernel reads the logits once and draws every row (with a
    ``generator``, or ``fused=False``: the plain form)."""
    pending = pending or [0] * len(params)
    finish = (lambda t: t.cpu()) if to_host else (lambda t: t)
    if fused and generator is None and _fused(logits, params, generated, eos_token_ids):
        return finish(_sample_fused(logits, params, generated, eos_token_ids, pending))
    logits = logits.float()
    batch, vocab = logits.shape
    device = logits.device
    for i, (p, gen) in enumerate(zip(params, generated)):
        if (p.presence_penalty or p.frequency_penalty) and gen:
            ids = upload(gen, torch.long, device)
            # scatter_add_, not bincount: bincount sizes its output from the largest id,
            # which it reads on the host
            counts = torch.zeros(vocab, dtype=logits.dtype, device=device).scatter_add_(
                0, ids, torch.ones(len(gen), dtype=logits.dtype, device=device))
            logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
    suppress = _suppressed(params, generated, eos_token_ids, pending)
    if suppress:
        _suppress(logits, suppress, list(eos_token_ids))
    greedy_rows = [p.temperature <= GREEDY_BELOW for p in params]
    if all(greedy_rows):
        return finish(logits.argmax(dim=-1))
    temps = upload([max(p.temperature, GREEDY_BELOW) for p in params], logits.dtype, device)
    probs = torch.softmax(logits / temps.unsqueeze(1), dim=-1)
    if any(p.top_p < 1.0 for p in params):
        top_p = upload([p.top_p for p in params], probs.dtype, device)
        sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)
        cum = sorted_probs.cumsum(dim=-1)
        drop = (cum - sorted_probs) > top_p.unsqueeze(1)
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = _draw(sorted_probs, generator)
        sampled = sorted_idx.gather(1, choice.unsqueeze(1)).squeeze(1)
    else:
        sampled = _draw(probs, generator)
    if any(greedy_rows):
        greedy = upload(greedy_rows, torch.bool, device)
        sampled = torch.where(greedy, logits.argmax(dim=-1), sampled)
    return finish(sampled)


def _suppressed(params: Sequence[SamplingParams], generated: Sequence[Sequence[int]], eos_token_ids: Sequence[int],
                pending: Sequence[int]) -> list[int]:
    """Rows that may not end yet: ``ignore_eos``, or fewer than ``min_tokens`` tokens so far."""
    if not eos_token_ids:
        return []
    return [i for i, (p, gen, extra) in enumerate(zip(params, generated, pending))
            if p.ignore_eos or len(gen) + extra < p.min_tokens]


def _fused(logits: torch.Tensor, params: Sequence[SamplingParams], generated: Sequence[Sequence[int]],
           eos_token_ids: Sequence[int]) -> bool:
    """Whether the one-pass kernel draws this batch: it runs here, and no row asks for top-p
    or (with a history) a penalty."""
    if fused_sampling is None or not fused_sampling.supported(logits, len(eos_token_ids)):
        return False
    return not any(p.top_p < 1.0 or ((p.presence_penalty or p.frequency_penalty) and gen)
                   for p, gen in zip(params, generated))


def _sample_fused(logits: torch.Tensor, params: Sequence[SamplingParams], generated: Sequence[Sequence[int]],
                  eos_token_ids: Sequence[int], pending: Sequence[int]) -> torch.Tensor:
    device = logits.device
    temps = upload([p.temperature if p.temperature > GREEDY_BELOW else 0.0 for p in params], torch.float32, device)
    rows = _suppressed(params, generated, eos_token_ids, pending)
    suppress = banned = None
    if rows:
        chosen = set(rows)
        suppress = upload([int(i in chosen) for i in range(len(params))], torch.int32, device)
        banned = upload(list(eos_token_ids), torch.int32, device)
    return fused_sampling.sample(logits, temps, suppress, banned)
