"""Temperature sampling of a whole batch in one pass over the logits.

Why: the plain form (:mod:`inference.engine.sampling`) widens the logits to float32, divides
by the temperature, takes the softmax, draws an exponential variate per logit and takes
``argmax(p / q)``: about ten passes over a ``[rows, vocab]`` array. For the DeepSeek-LLM-7B
shape (102,400 tokens) at 256 rows that array is 105 MB in float32, about 1.2 GB of memory
traffic per decode step, roughly 0.3 ms on an H200 beside a step of about 18 ms.

This kernel reads the logits once, in their own dtype, and draws with the Gumbel-max trick:
``argmax(logit / T + g)`` with ``g = -log(-log(u))``, ``u`` uniform, is a draw from
``softmax(logit / T)``. It is the same draw as ``argmax(p / q)`` with ``q = -log(u)``
exponential (take the logarithm of ``p / q``), so the distribution is the plain form's; the
random numbers are Triton's (Philox, keyed by a seed from Python's ``random`` at each call),
not PyTorch's. A row whose temperature is 0 takes its largest logit (the first
one on a tie, as ``argmax``), and a row marked in ``suppress`` never takes the ids in
``banned`` (EOS for ``ignore_eos`` / ``min_tokens``), so the logits are not written to.

Each program takes one block of one row (of a few rows under the interpreter) and writes
each row's best score in the block and its index; ``argmax`` over the blocks' scores
finishes the row. The uniform numbers are the cost: one Philox call makes four, so a block
is read as four quarters, each taking one of them (a first version used one number per
call and took 0.17 ms at 256 rows on an H200, against 0.44 ms for the plain form). Nothing here reads a device value on
the host. On the CPU it runs under Triton's interpreter (``TRITON_INTERPRET=1``), which is
how the tests check its distribution.
"""
from __future__ import annotations

import random

import torch
import triton
import triton.language as tl

from inference.engine.triton_round import runs_on

#: Logits per program (at most; a smaller vocabulary takes one block of its own size).
BLOCK = 4096
#: Most ids ``banned`` may hold (EOS ids: one to three for the models served here).
MAX_BANNED = 8


@triton.jit
def _quarter(L, SUPPRESS, BANNED, rows, live_row, cols, vocab, stride_l, t, u, N_BANNED: tl.constexpr):
    """One quarter of a block: each row's best ``logit / T + Gumbel(u)`` (greedy rows: the
    logit) and the first column that has it."""
    live = live_row[:, None] & (cols < vocab)[None, :]
    x = tl.load(L + rows.to(tl.int64)[:, None] * stride_l + cols[None, :], mask=live,
                other=float("-inf")).to(tl.float32)
    if N_BANNED > 0:
        banning = (tl.load(SUPPRESS + rows, mask=live_row, other=0) != 0)[:, None]
        for i in tl.static_range(N_BANNED):
            x = tl.where(banning & (cols == tl.load(BANNED + i))[None, :], float("-inf"), x)
    score = tl.where(t > 0, x / tl.where(t > 0, t, 1.0) - tl.log(-tl.log(u)), x)  # u == 0: -inf
    score = tl.where(live, score, float("-inf"))
    best = tl.max(score, axis=1)
    return best, tl.min(tl.where(score == best[:, None], cols[None, :], 2147483647), axis=1)


# ``n_rows`` unspecialised too: Triton compiles an integer argument's value classes (1, a
# multiple of 16, other) apart, and sampling runs outside the captured steps, so a first step
# of 1 row or of 16, 32, … rows would compile there, about a second each with the engine
# stopped (an H200 run lost 1.2 s of its 64-stream scenario to that); the start-up check's
# 4 rows then compile the only form serving uses.
@triton.jit(do_not_specialize=["seed", "n_rows"])
def _block_best(L, TEMP, SUPPRESS, BANNED, BEST, INDEX, seed, n_rows, vocab, stride_l, blocks,
                N_BANNED: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    QUARTER: tl.constexpr = BLOCK // 4
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    block = tl.program_id(1)
    live_row = rows < n_rows
    t = tl.load(TEMP + rows, mask=live_row, other=0.0)[:, None]
    lane = tl.arange(0, QUARTER)
    # one Philox call gives four numbers: one per quarter of the block
    u0, u1, u2, u3 = tl.rand4x(seed, (rows[:, None] * blocks + block) * QUARTER + lane[None, :])
    start = block * BLOCK
    best, first = _quarter(L, SUPPRESS, BANNED, rows, live_row, start + lane, vocab, stride_l, t, u0, N_BANNED)
    b, i = _quarter(L, SUPPRESS, BANNED, rows, live_row, start + QUARTER + lane, vocab, stride_l, t, u1, N_BANNED)
    first = tl.where(b > best, i, first)  # a later quarter wins only when strictly better
    best = tl.maximum(b, best)
    b, i = _quarter(L, SUPPRESS, BANNED, rows, live_row, start + 2 * QUARTER + lane, vocab, stride_l, t, u2,
                    N_BANNED)
    first = tl.where(b > best, i, first)
    best = tl.maximum(b, best)
    b, i = _quarter(L, SUPPRESS, BANNED, rows, live_row, start + 3 * QUARTER + lane, vocab, stride_l, t, u3,
                    N_BANNED)
    first = tl.where(b > best, i, first)
    best = tl.maximum(b, best)
    tl.store(BEST + rows * blocks + block, best, mask=live_row)
    tl.store(INDEX + rows * blocks + block, first, mask=live_row)


def supported(logits: torch.Tensor, banned: int = 0) -> bool:
    """Whether :func:`sample` takes ``logits`` (``[rows, vocab]``, unit stride in vocab, a
    floating dtype) with ``banned`` ids: on a CUDA device, or any device under Triton's
    interpreter."""
    if logits.dim() != 2 or not logits.is_floating_point() or logits.stride(1) != 1 or banned > MAX_BANNED:
        return False
    rows, vocab = logits.shape
    return 0 < rows * vocab < 2 ** 31 and runs_on(logits.device)


def sample(logits: torch.Tensor, temperature: torch.Tensor, suppress: torch.Tensor | None = None,
           banned: torch.Tensor | None = None, seed: int | None = None, block: int | None = None,
           rows_per_program: int | None = None) -> torch.Tensor:
    """One token id per row of ``logits``: a draw from ``softmax(logits / temperature)`` (a
    row of temperature 0: its largest logit); rows where ``suppress`` is nonzero never take
    an id in ``banned``. ``temperature`` (float32) and ``suppress`` (int32) are per row, on
    the logits' device. ``seed``: the draw's key (default: from Python's ``random``, so
    ``random.seed`` repeats the draws; a draw from a torch generator would be one more
    operation on a tensor per step). ``block``: logits per program
    (a power of two, at least 4; default ``BLOCK``, or the vocabulary's size rounded up where
    smaller);
    ``rows_per_program`` (a power of two; default 1 on a GPU, where a row's blocks already
    fill the card, 64 under the interpreter, whose cost is per program)."""
    rows, vocab = logits.shape
    rows_per_program = rows_per_program or (1 if logits.is_cuda else 64)
    block = block or max(4, min(BLOCK, triton.next_power_of_2(vocab)))
    blocks = triton.cdiv(vocab, block)
    if seed is None:
        seed = random.getrandbits(31)
    n_banned = 0 if banned is None or suppress is None else banned.numel()
    best = torch.empty((rows, blocks), dtype=torch.float32, device=logits.device)
    index = torch.empty((rows, blocks), dtype=torch.int32, device=logits.device)
    _block_best[(triton.cdiv(rows, rows_per_program), blocks)](
        logits, temperature, suppress if n_banned else temperature, banned if n_banned else temperature, best, index,
        seed, rows, vocab, logits.stride(0), blocks, N_BANNED=n_banned, ROWS=rows_per_program, BLOCK=block)
    if blocks == 1:
        return index[:, 0].long()
    return index.gather(1, best.argmax(dim=1, keepdim=True)).squeeze(1).long()
