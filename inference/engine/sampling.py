"""Per-row sampling for a batch in which every request keeps its own settings.

Vectorised over the batch for temperature and top-p; penalties and EOS suppression only touch
the rows that asked for them, so a batch of plain requests pays nothing for them.
"""
from __future__ import annotations

from typing import Sequence

import torch

from inference.engine.base import SamplingParams


def sample_next_tokens(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generated: Sequence[Sequence[int]],
    eos_token_ids: Sequence[int],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one next token per row of ``logits`` ([batch, vocab]); returns a CPU LongTensor."""
    logits = logits.float()
    batch, vocab = logits.shape
    device = logits.device
    for i, (p, gen) in enumerate(zip(params, generated)):
        if (p.presence_penalty or p.frequency_penalty) and gen:
            ids = torch.tensor(gen, device=device)
            counts = torch.bincount(ids, minlength=vocab).to(logits.dtype)
            logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
        if eos_token_ids and (p.ignore_eos or len(gen) < p.min_tokens):
            logits[i, list(eos_token_ids)] = float("-inf")
    temps = torch.tensor([p.temperature for p in params], device=device, dtype=logits.dtype)
    greedy = temps <= 1e-5
    if bool(greedy.all()):
        return logits.argmax(dim=-1).cpu()
    probs = torch.softmax(logits / temps.clamp(min=1e-5).unsqueeze(1), dim=-1)
    top_p = torch.tensor([p.top_p for p in params], device=device, dtype=probs.dtype)
    if bool((top_p < 1.0).any()):
        sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)
        cum = sorted_probs.cumsum(dim=-1)
        drop = (cum - sorted_probs) > top_p.unsqueeze(1)
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator).squeeze(1)
        sampled = sorted_idx.gather(1, choice.unsqueeze(1)).squeeze(1)
    else:
        sampled = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return torch.where(greedy, logits.argmax(dim=-1), sampled).cpu()
