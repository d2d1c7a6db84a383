"""A small trained classifier for refusals, beside the phrase rules of ``inference.quality``.

Why: phrase rules are explainable and cheap, but refusals in support chat come in more
shapes than a rule list can name (这个我帮不了您 / 我这边没有权限查看 / "That's outside
what I can help with" / "I'd rather not…"). A logistic regression over character 2- and
3-grams of the reply's opening generalises over those shapes in both languages, and it
stays cheap: the score is one dictionary lookup per n-gram of the first
``WINDOW`` characters (about 10-20 µs a reply, measured in ``benchmarks/refusal_bench.py``).

The model is not kept in git (no weights in the repository): it is trained from
``inference/data/refusals_train.yaml`` on first use, deterministically (fixed seed, fixed
order), in about a second, and cached under ``~/.cache/seekwatch/models/`` keyed by a
hash of the training data and this file, so every later start loads it from disk.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

from inference.model_cache import content_key, models_dir
from inference.quality import normalise

#: Characters of the (normalised) reply the classifier reads: a refusal opens the answer.
WINDOW = 96
#: N-gram sizes (characters). Bigrams carry Chinese words, trigrams English word pieces.
NGRAMS = (2, 3)
#: Training: epochs of SGD, step size, L2, minimum count of an n-gram to become a feature.
EPOCHS = 30
LEARNING_RATE = 0.2
L2 = 1e-4
MIN_COUNT = 2
SEED = 0
_ZEROS = itertools.repeat(0.0)

TRAIN_PATH = Path(__file__).parent / "data" / "refusals_train.yaml"
_SLOT = re.compile(r"\{([a-z_]+)\}")


def load_training_set(path: Path = TRAIN_PATH) -> list[tuple[str, bool]]:
    """The labelled replies of the training file: the hand-written ``examples`` plus the
    deterministic expansion of ``templates`` (``per_template`` combinations each)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    out: list[tuple[str, bool]] = []
    for line in data.get("examples", "").splitlines():
        line = line.strip()
        if not line:
            continue
        label, _, text = line.partition("|")
        if label.strip() not in ("0", "1") or not text.strip():
            raise ValueError(f"{path}: examples: bad line {line!r} (want '1 | text' or '0 | text')")
        out.append((text.strip(), label.strip() == "1"))
    slots: dict[str, list[str]] = data.get("slots", {})
    per = int(data.get("per_template", 40))
    rng = random.Random(SEED)
    for t in data.get("templates", []):
        names = _SLOT.findall(t["text"])
        combos = list(itertools.product(*(range(len(slots[n])) for n in names)))
        rng.shuffle(combos)
        for combo in combos[:per]:
            values = iter(slots[n][i] for n, i in zip(names, combo))
            text = _SLOT.sub(lambda _m: next(values), t["text"])
            out.append((text[:1].upper() + text[1:], bool(t["label"])))
    seen: set[str] = set()
    unique = []
    for text, label in out:
        if text not in seen:
            seen.add(text)
            unique.append((text, label))
    return unique


_QUOTED = re.compile(r'"[^"]*"|「[^」]*」')


def _normalise(text: str) -> str:
    """The normalised opening, with quoted text folded to ``"q"``: a quoted refusal (an
    error message, a bot's reply being discussed) is not the assistant refusing -- the
    phrase rules skip quotes for the same reason."""
    t = normalise(text[: WINDOW * 2 + 16])
    if '"' in t or "「" in t:
        t = _QUOTED.sub('"q"', t)
    return t[:WINDOW]


_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?").findall
_HAS_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]").search


def _grams(t: str) -> list[str]:
    """Chinese text: character 2- and 3-grams (they carry its words). Latin text: words
    and word pairs (``w:can't``, ``w:can't help``), cheaper and sharper than character
    n-grams of English. Mixed text gets both."""
    out = [t[i:i + n] for n in NGRAMS for i in range(len(t) - n + 1)] if _HAS_CJK(t) else []
    words = _WORD(t)
    if words:
        words[0] = "^" + words[0]  # the opening word ("sorry", "unfortunately", "no")
        out += ["w:" + w for w in words]
        out += ["w:" + a + " " + b for a, b in zip(words, words[1:])]
    return out


def features(text: str) -> list[str]:
    """What the model scores, read from the normalised opening (a start mark makes
    "opens with" differ from "contains")."""
    return _grams("\x02" + _normalise(text))


@dataclass
class RefusalClassifier:
    """Logistic regression: P(refusal) = sigmoid(bias + sum of n-gram weights)."""

    weights: dict[str, float]
    bias: float
    threshold: float = 0.5

    def score(self, text: str) -> float:
        """Log-odds that ``text`` is a refusal."""
        # map() with two iterables calls dict.get(gram, 0.0) in C: ~3x faster than a loop.
        return self.bias + sum(map(self.weights.get, _grams("\x02" + _normalise(text)), _ZEROS))

    def probability(self, text: str) -> float:
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, self.score(text)))))

    def is_refusal(self, text: str) -> bool:
        return self.probability(text) >= self.threshold

    def strongest(self, text: str, k: int = 3) -> list[str]:
        """The n-grams that pushed hardest toward "refusal" (explains a decision)."""
        grams = set(features(text))
        return sorted((g for g in grams if self.weights.get(g, 0.0) > 0),
                      key=lambda g: -self.weights[g])[:k]

    # ------------------------------------------------------------------ training

    @classmethod
    def train(cls, examples: Iterable[tuple[str, bool]], threshold: float = 0.5) -> "RefusalClassifier":
        """SGD on the logistic loss with L2, fixed seed and order: same data, same model."""
        data = [(features(t), 1.0 if y else 0.0) for t, y in examples]
        counts: dict[str, int] = {}
        for feats, _ in data:
            for g in set(feats):
                counts[g] = counts.get(g, 0) + 1
        vocab = {g for g, c in counts.items() if c >= MIN_COUNT}
        data = [([g for g in feats if g in vocab], y) for feats, y in data]
        w: dict[str, float] = {g: 0.0 for g in sorted(vocab)}
        b = 0.0
        rng = random.Random(SEED)
        order = list(range(len(data)))
        for epoch in range(EPOCHS):
            rng.shuffle(order)
            lr = LEARNING_RATE / (1.0 + epoch * 0.1)
            for idx in order:
                feats, y = data[idx]
                s = b + sum(w[g] for g in feats)
                p = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, s))))
                grad = p - y
                b -= lr * grad
                for g in feats:
                    w[g] -= lr * (grad + L2 * w[g])
        return cls({g: round(v, 6) for g, v in w.items() if abs(v) > 1e-6}, round(b, 6), threshold)

    def to_json(self) -> str:
        return json.dumps({"bias": self.bias, "threshold": self.threshold, "weights": self.weights},
                          ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RefusalClassifier":
        d = json.loads(text)
        return cls({str(k): float(v) for k, v in d["weights"].items()}, float(d["bias"]),
                   float(d["threshold"]))


def model_key(path: Path = TRAIN_PATH) -> str:
    """Hash of what the model is made from: training data, this module's code and the
    normaliser it reads text through."""
    return content_key(path, Path(__file__), Path(__file__).with_name("quality.py"))


def load_or_train(path: Path = TRAIN_PATH, threshold: float = 0.5) -> RefusalClassifier:
    """The cached model for ``path`` (trained and cached on first use)."""
    cached = models_dir() / f"refusal-classifier-{model_key(path)}.json"
    try:
        clf = RefusalClassifier.from_json(cached.read_text(encoding="utf-8"))
        clf.threshold = threshold
        return clf
    except (OSError, ValueError, KeyError):
        pass
    clf = RefusalClassifier.train(load_training_set(path), threshold)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(clf.to_json(), encoding="utf-8")
        os.replace(tmp, cached)
    except OSError:
        pass  # a read-only home: the model still works, it is just trained again next start
    return clf
