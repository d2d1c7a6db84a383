"""Temperature sampling in one pass (``inference.engine.fused_sampling``), under Triton's interpreter.

What the kernel must keep of the plain form (``inference.engine.sampling``): the
distribution ``softmax(logits / T)`` (a chi-square test over 20,000 draws, which the wrong
temperature fails), the largest logit for a greedy row with the first index on a tie, also
across blocks, no suppressed EOS ever, draws repeated by ``random.seed``, and nothing
that waits for the device. ``sample_next_tokens`` takes it where it applies and the plain
form for top-p, penalties and an explicit generator.
"""
from __future__ import annotations

from inference.engine.transformers_cb import TransformersEngine
from tests.node.interpreted import run_json

KERNEL_CHECK = r"""
import json
import random
import torch
from inference.engine import fused_sampling as fs

out = {}
torch.manual_seed(0)
logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0, 1.5, -3.0, 0.2])
n, rows = 20_000, 500

def chi2(counts, probs):
    want = probs * counts.sum()
    return float(((counts - want) ** 2 / want).sum())

counts = torch.zeros(8)
for _ in range(n // rows):
    tok = fs.sample(logits.repeat(rows, 1), torch.full((rows,), 0.7), rows_per_program=512)
    counts += torch.bincount(tok, minlength=8)
out["chi2 at T"] = chi2(counts, torch.softmax(logits / 0.7, -1))
out["chi2 at another T"] = chi2(counts, torch.softmax(logits / 1.0, -1))
# blocks of 4 over a vocabulary of 8: the draw crosses blocks
counts = torch.zeros(8)
for _ in range(n // rows):
    tok = fs.sample(logits.repeat(rows, 1).to(torch.bfloat16), torch.full((rows,), 0.7), block=4,
                    rows_per_program=512)
    counts += torch.bincount(tok, minlength=8)
out["chi2 across blocks, bf16"] = chi2(counts, torch.softmax(logits.to(torch.bfloat16).float() / 0.7, -1))

# greedy rows: the largest logit, the first on a tie, within and across blocks of 4
tied = torch.tensor([[0.0, 3.0, 1.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                     [0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 5.0, 0.0],
                     [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.0]])
out["greedy"] = fs.sample(tied, torch.zeros(3), block=4).tolist()
big = torch.randn(6, 5000, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
out["greedy bf16 = argmax"] = fs.sample(big, torch.zeros(6), block=1024).tolist() == big.float().argmax(1).tolist()

# mixed: greedy rows stay put while sampled rows move
mixed = logits.repeat(64, 1)
temps = torch.tensor([0.0 if i % 2 else 1.0 for i in range(64)])
draws = torch.stack([fs.sample(mixed, temps) for _ in range(20)])
out["greedy rows of a mixed batch"] = sorted(set(draws[:, 1::2].flatten().tolist()))
out["sampled rows of a mixed batch"] = len(set(draws[:, ::2].flatten().tolist()))

# suppression: marked rows never take a banned id, even the dominant one
dominant = torch.full((400, 8), -2.0)
dominant[:, 5] = 9.0
suppress = torch.tensor([i % 2 for i in range(400)], dtype=torch.int32)
tok = fs.sample(dominant, torch.full((400,), 1.0), suppress, torch.tensor([5, 0], dtype=torch.int32),
                rows_per_program=512)
out["banned taken by marked rows"] = int(((tok[1::2] == 5) | (tok[1::2] == 0)).sum())
out["unmarked rows taking the dominant id"] = int((tok[::2] == 5).sum())
greedy = fs.sample(dominant[:2], torch.zeros(2), suppress[:2], torch.tensor([5], dtype=torch.int32))
out["greedy with the top id banned"] = greedy.tolist()

# the same key gives the same draws
random.seed(7); first = fs.sample(mixed, temps)
random.seed(7); again = fs.sample(mixed, temps)
out["repeated"] = first.tolist() == again.tolist()
out["supported"] = [fs.supported(logits.repeat(2, 1)), fs.supported(logits.repeat(2, 1)[:, ::2]),
                    fs.supported(logits), fs.supported(logits.repeat(2, 1), banned=fs.MAX_BANNED + 1)]
print(json.dumps(out))
"""


def test_the_kernel_draws_from_the_softmax_and_keeps_greedy_rows_and_suppression():
    got = run_json(KERNEL_CHECK)
    # 7 degrees of freedom: 24.3 is the 0.1 % tail; the same draws against T = 1.0 land far out
    assert got["chi2 at T"] < 24.3, got
    assert got["chi2 across blocks, bf16"] < 24.3, got
    assert got["chi2 at another T"] > 200, got
    assert got["greedy"] == [1, 5, 9]
    assert got["greedy bf16 = argmax"]
    assert got["greedy rows of a mixed batch"] == [0]
    assert got["sampled rows of a mixed batch"] >= 4
    assert got["banned taken by marked rows"] == 0
    assert got["unmarked rows taking the dominant id"] == 200
    assert got["greedy with the top id banned"] == [5, 0]  # the rest tie: the first
    assert got["repeated"]
    assert got["supported"] == [True, False, False, False]


SAMPLER_CHECK = r"""
import json
import torch
from inference.engine import fused_sampling, sampling
from inference.engine.base import SamplingParams
from tests.node.test_sampling import _waits

calls = []
kernel = fused_sampling.sample
fused_sampling.sample = lambda *a, **k: calls.append(1) or kernel(*a, **k)

def used(params, generated=None, generator=None, logits=None):
    calls.clear()
    logits = torch.randn(len(params), 50, generator=torch.Generator().manual_seed(2)) if logits is None else logits
    tokens = sampling.sample_next_tokens(logits, params, generated or [[]] * len(params), [7, 9],
                                         generator, to_host=False)
    return bool(calls), tokens

plain = SamplingParams(temperature=0.7, max_tokens=8)
greedy = SamplingParams(temperature=0.0, max_tokens=8)
out = {
    "temperature": used([plain] * 3)[0],
    "greedy": used([greedy] * 3)[0],
    "mixed with ignore_eos": used([plain, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)])[0],
    "top_p": used([plain, SamplingParams(temperature=0.7, top_p=0.9, max_tokens=8)])[0],
    "penalty with a history": used([SamplingParams(temperature=0.7, presence_penalty=1.0, max_tokens=8)],
                                   [[3, 3]])[0],
    "penalty, no history yet": used([SamplingParams(temperature=0.7, presence_penalty=1.0, max_tokens=8)])[0],
    "generator": used([plain], generator=torch.Generator().manual_seed(1))[0],
}
logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(3))
logits[:, 7] = 20.0  # EOS would win every greedy row
want = logits.clone()
want[:, [7, 9]] = float("-inf")
params = [SamplingParams(temperature=0.0, max_tokens=8, min_tokens=3)] * 5
tokens = sampling.sample_next_tokens(logits.clone(), params, [[1], [1, 2], [], [1, 2, 3], [1, 2]], [7, 9],
                                     pending=[0, 0, 2, 0, 1])
out["min_tokens with pending"] = tokens.tolist()
out["want"] = want.argmax(1).tolist()[:3] + [7, 7]
calls.clear()
out["waits"] = _waits(lambda: sampling.sample_next_tokens(logits.clone(), [plain, greedy] * 2 + [plain],
                                                           [[]] * 5, [7], to_host=False))
out["fused in that call"] = bool(calls)
print(json.dumps(out))
"""


def test_the_sampler_takes_the_kernel_where_it_applies_and_waits_for_nothing():
    got = run_json(SAMPLER_CHECK)
    assert got["temperature"] and got["greedy"] and got["mixed with ignore_eos"]
    assert got["penalty, no history yet"]  # nothing to penalise yet: the kernel draws
    assert not got["top_p"] and not got["penalty with a history"] and not got["generator"]
    # min_tokens 3 counts pending tokens: rows 0-1 (1 and 2 so far) and row 2 (0 + 2 pending)
    # may not end; rows 3 (3 tokens) and 4 (2 + 1 pending) take EOS, the largest logit
    assert got["min_tokens with pending"] == got["want"]
    assert got["waits"] == [] and got["fused in that call"]


ENGINE_CHECK = r"""
import json
from inference.engine import fused_sampling
from inference.engine.transformers_cb import TransformersEngine
from tests.node.test_engine_slots import _run

PROMPTS = ["请帮我查一下订单 12345 的状态。", "How do I reset my password?"]
out = {}
for name in ("kernel", "broken kernel"):
    if name == "broken kernel":  # a kernel that gives wrong tokens must not be used
        good = fused_sampling.sample
        fused_sampling.sample = lambda logits, *a, **k: good(logits, *a, **k) * 0 + 1
    engine = TransformersEngine(sys.argv[1], device="cpu", max_model_len=256, max_batch=2, max_prefill_tokens=16)
    engine.record_tokens = True
    greedy = _run(engine, PROMPTS, [10, 6], True)  # ignore_eos: EOS suppressed in every row
    out[name] = {"path": engine.sampling_path, "fused": engine.fused_sampling, "greedy": greedy}
    engine = TransformersEngine(sys.argv[1], device="cpu", max_model_len=256, max_batch=2, max_prefill_tokens=16)
    engine.record_tokens = True
    sampled = _run(engine, PROMPTS, [10, 6], True, temperature=lambda i: 0.0 if i else 0.8)
    out[name]["sampled lengths"] = [len(t) for t in sampled]
    out[name]["greedy row of a mixed batch"] = sampled[1]
print(json.dumps(out))
"""


def test_the_engine_checks_the_kernel_at_start_up_and_serves_the_same_greedy_tokens(tiny_model_dir):
    """Under the interpreter the engine takes the kernel (its start-up check passes) and its
    greedy tokens are the plain form's; a kernel that answers wrongly is left out."""
    from tests.node.test_engine_slots import _run

    plain = TransformersEngine(tiny_model_dir, device="cpu", max_model_len=256, max_batch=2, max_prefill_tokens=16)
    plain.record_tokens = True
    want = _run(plain, ["请帮我查一下订单 12345 的状态。", "How do I reset my password?"], [10, 6], True)
    assert plain.sampling_path == "plain" and not plain.fused_sampling  # the CPU without the interpreter
    got = run_json(ENGINE_CHECK, str(tiny_model_dir))
    kernel, broken = got["kernel"], got["broken kernel"]
    assert kernel["fused"] and kernel["path"] == "one-pass kernel"
    assert kernel["greedy"] == want
    assert kernel["sampled lengths"] == [10, 6] and kernel["greedy row of a mixed batch"] == want[1]
    assert not broken["fused"] and broken["path"].startswith("plain (the kernel disagreed")
    assert broken["greedy"] == want and broken["greedy row of a mixed batch"] == want[1]


def test_the_row_count_does_not_make_the_kernel_compile_again():
    """Sampling runs outside the captured steps, so any argument Triton specialises on by
    value would compile a new form of the kernel in the middle of serving (1 row, 16, 32, …
    rows: a second each on an H200, the engine stopped). The row count and the draw's key are
    left unspecialised, so the start-up check compiles every form serving uses."""
    from inference.engine import fused_sampling

    assert {"seed", "n_rows"} <= set(fused_sampling._block_best.do_not_specialize)
