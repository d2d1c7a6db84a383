"""The device time two fusions save, each beside the form it replaced, as CUDA graph replays
(what the engine's steps are), on one GPU:

* **Sampling** (``inference.engine.fused_sampling``): ``sample_next_tokens`` in its plain
  form (float32 copy, temperature, softmax, exponential draws, ``argmax(p / q)``) and with
  the one-pass kernel, at 1, 64 and 256 rows of DeepSeek-LLM-7B's 102,400 logits in bf16,
  temperature 0.7 and EOS suppressed (the serving benchmark's requests: ``ignore_eos``).
* **Residual adds** (``inference.engine.fused_residual``): the 7B shape's ``o_proj``
  (4,096 → 4,096) and ``down_proj`` (11,008 → 4,096) products followed by the add, against
  the same products added in place (``addmm_``), 30 layers of each per graph, at 1, 64 and
  256 rows and a 1,344-token prefill chunk.

It also checks the compiled kernel, which the test suite can only run under Triton's
interpreter: greedy rows give ``argmax`` at every shape timed (with and without EOS
suppressed), and 100,000 draws over 8 tokens fit ``softmax(logits / T)`` (chi-square, with
the plain form's draws beside it).

    python benchmarks/fusion_probe.py --out benchmarks/results/h200-<date>-fusion-probe.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.engine import fused_sampling  # noqa: E402
from inference.engine.base import SamplingParams  # noqa: E402
from inference.engine.sampling import sample_next_tokens  # noqa: E402
from inference.engine.slot_attention import time_call  # noqa: E402

VOCAB = 102_400
EOS = [100_001]
HIDDEN, INTERMEDIATE, LAYERS = 4096, 11008, 30


def replay_ms(fn) -> float:
    """Median device time of one ``fn`` captured as a CUDA graph (ms per replay), timed as the
    engine times its attention kernels at start-up."""
    return time_call(fn, torch.device("cuda"), repeat=7)


def sampling(rows_list: list[int]) -> list[dict]:
    out = []
    g = torch.Generator().manual_seed(0)
    for rows in rows_list:
        logits = (torch.randn(rows, VOCAB, generator=g) * 3).to("cuda", torch.bfloat16)
        params = [SamplingParams(temperature=0.7, max_tokens=8, ignore_eos=True)] * rows
        gen = [[]] * rows
        plain = replay_ms(lambda: sample_next_tokens(logits, params, gen, EOS, to_host=False, fused=False))
        fused = replay_ms(lambda: sample_next_tokens(logits, params, gen, EOS, to_host=False))
        greedy = [SamplingParams(temperature=0.0, max_tokens=8)] * rows
        suppressed = [SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)] * rows
        masked = logits.float().index_fill(1, torch.tensor(EOS, device="cuda"), float("-inf"))
        out.append({
            "rows": rows, "plain_ms": round(plain, 4), "one_pass_ms": round(fused, 4),
            "greedy_equals_argmax": torch.equal(sample_next_tokens(logits, greedy, gen, EOS, to_host=False),
                                                logits.float().argmax(1)),
            "greedy_with_eos_suppressed_equals_argmax": torch.equal(
                sample_next_tokens(logits, suppressed, gen, EOS, to_host=False), masked.argmax(1)),
        })
        print(json.dumps(out[-1]), flush=True)
    return out


def distribution(draws: int = 100_000, temperature: float = 0.7) -> dict:
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0, 1.5, -3.0, 0.2])
    probs = torch.softmax(logits / temperature, -1)
    batch = logits.repeat(draws, 1).to("cuda", torch.bfloat16)
    params = [SamplingParams(temperature=temperature, max_tokens=8)] * draws
    result = {"draws": draws, "tokens": 8, "degrees_of_freedom": 7, "chi2_0.1pct_tail": 24.32}
    for name, fused in (("one_pass", True), ("plain", False)):
        tokens = sample_next_tokens(batch, params, [[]] * draws, [], to_host=True, fused=fused)
        counts = torch.bincount(tokens, minlength=8).double()
        want = probs.double() * draws
        result[f"chi2_{name}"] = round(float(((counts - want) ** 2 / want).sum()), 2)
    print(json.dumps(result), flush=True)
    return result


def residual(rows_list: list[int]) -> list[dict]:
    out = []
    g = torch.Generator().manual_seed(1)
    o_w = (torch.randn(HIDDEN, HIDDEN, generator=g) / 64).to("cuda", torch.bfloat16)
    down_w = (torch.randn(HIDDEN, INTERMEDIATE, generator=g) / 100).to("cuda", torch.bfloat16)
    for rows in rows_list:
        x = torch.randn(rows, HIDDEN, generator=g).to("cuda", torch.bfloat16)
        attn = torch.randn(rows, HIDDEN, generator=g).to("cuda", torch.bfloat16)
        act = torch.randn(rows, INTERMEDIATE, generator=g).to("cuda", torch.bfloat16)
        h = x.clone()

        def separate():
            y = x
            for _ in range(LAYERS):
                y = y + F.linear(attn, o_w)
                y = y + F.linear(act, down_w)
            return y

        def in_place():
            h.copy_(x)  # one copy per graph so every replay starts from the same values
            for _ in range(LAYERS):
                h.addmm_(attn, o_w.t())
                h.addmm_(act, down_w.t())
            return h

        a, b = separate(), in_place()
        err = float((a.float() - b.float()).abs().max() / a.float().abs().max())
        out.append({"rows": rows, "product_then_add_ms": round(replay_ms(separate), 4),
                    "add_in_the_product_ms": round(replay_ms(in_place), 4), "layers": LAYERS,
                    "relative_difference": round(err, 5)})
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--prefill-tokens", type=int, default=1344)
    ap.add_argument("--out", help="JSON results")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("fusion_probe.py needs a CUDA device", file=sys.stderr)
        return 2
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "kernel_block": fused_sampling.BLOCK,
              "sampling": sampling(args.rows), "distribution": distribution(),
              "residual": residual([*args.rows, args.prefill_tokens])}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
