"""Refusal detector: accuracy on the held-out set and cost per reply.

Prints, and with ``--write-docs`` writes into docs/benchmarks.md (between the
``<!-- refusal_bench -->`` markers), per language:

* precision and recall on ``tests/instrumentation/refusal_heldout.py`` of the phrase rules
  alone, the classifier alone and both (what the node runs);
* the classifier's cost per reply and the whole detector's (``RefusalDetector.match``),
  as the median over ``--rounds`` passes of the fastest of 5 timings of all held-out
  replies, plus a 2 KB answer (the classifier reads only the opening, so length barely
  matters).

    PYTHONPATH=. ~/.cache/seekwatch/venv/bin/python -m benchmarks.refusal_bench --write-docs
"""
from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_block  # noqa: E402
from inference.quality import RefusalDetector, default_detector  # noqa: E402
from tests.instrumentation.refusal_heldout import HELD_OUT_EN, HELD_OUT_ZH  # noqa: E402


def _pr(predict, corpus) -> tuple[float, float, int, int, int, int]:
    tp = fp = fn = tn = 0
    for text, label in corpus:
        p = predict(text)
        tp += p and label
        fp += p and not label
        fn += (not p) and label
        tn += (not p) and not label
    return tp / (tp + fp), tp / (tp + fn), tp, fp, fn, tn


def _us_per_call(fn, texts, rounds: int) -> float:
    medians = []
    for _ in range(rounds):
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for t in texts:
                fn(t)
            best = min(best, time.perf_counter() - t0)
        medians.append(best / len(texts) * 1e6)
    return statistics.median(medians)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()

    full = default_detector()
    clf = full.classifier
    assert clf is not None, "the shipped refusals.yaml enables the classifier"
    rules = RefusalDetector.from_yaml()
    rules.classifier = None

    rows = ["| language | replies (refusals / answers) | rules alone P / R | classifier alone P / R "
            "| rules + classifier P / R (TP FP FN TN) |", "|---|---|---|---|---|"]
    for lang, corpus in (("Chinese", HELD_OUT_ZH), ("English", HELD_OUT_EN)):
        pos = sum(1 for _, y in corpus if y)
        r = _pr(rules.is_refusal, corpus)
        c = _pr(clf.is_refusal, corpus)
        f = _pr(full.is_refusal, corpus)
        rows.append(f"| {lang} | {len(corpus)} ({pos} / {len(corpus) - pos}) | {r[0]:.3f} / {r[1]:.3f} "
                    f"| {c[0]:.3f} / {c[1]:.3f} | **{f[0]:.3f} / {f[1]:.3f}** ({f[2]} {f[3]} {f[4]} {f[5]}) |")

    texts = [t for t, _ in HELD_OUT_ZH + HELD_OUT_EN]
    long_answer = ["以下是详细的排查步骤，请按顺序操作。" * 60 + "Restart the router and retry." * 20]
    timing = [
        "| what | µs per reply |", "|---|---:|",
        f"| classifier, held-out replies (median length {statistics.median(map(len, texts)):.0f} chars) "
        f"| {_us_per_call(clf.is_refusal, texts, args.rounds):.1f} |",
        f"| classifier, a {len(long_answer[0])}-char answer | {_us_per_call(clf.is_refusal, long_answer, args.rounds):.1f} |",
        f"| whole detector (`match`: rules, then classifier), held-out replies "
        f"| {_us_per_call(full.match, texts, args.rounds):.1f} |",
        f"| whole detector, the {len(long_answer[0])}-char answer | {_us_per_call(full.match, long_answer, args.rounds):.1f} |",
    ]
    table = (f"Run {dt.date.today()} on {_machine()}, {args.rounds} rounds.\n\n" + "\n".join(rows)
             + "\n\n" + "\n".join(timing))
    print(table)
    if args.write_docs:
        write_block("refusal_bench", "Refusal detector", table)
    return 0


def _machine() -> str:
    import os
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)"


if __name__ == "__main__":
    raise SystemExit(main())
