"""``seekwatch make-tiny-model``'s training data and cache, without training: the model
learns only the assistant's answers (and their end-of-sentence token), conversations are
repeatable, the cache key follows what the model is made from, and a second make copies
the cached model. (The training itself runs once per machine in the ``support_model_dir``
fixture; tests/demo/test_demo.py checks what the trained model answers.)"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from inference import tiny_model as tm

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer():
    return tm.train_tokenizer()


def test_conversations_are_repeatable_and_filled():
    corpus = tm.load_corpus()
    a, b = tm.conversations(corpus, 50, seed=1), tm.conversations(corpus, 50, seed=1)
    assert a == b and a != tm.conversations(corpus, 50, seed=2)
    for conv in a:
        roles = [m["role"] for m in conv if m["role"] != "system"]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert all("{" not in m["content"] for m in conv)     # every placeholder filled


def test_only_answers_and_their_eos_are_learned(tokenizer):
    conv = [{"role": "system", "content": "你是一名电商客服助手，请简洁、礼貌地回答。"},
            {"role": "user", "content": "如何退货？"}, {"role": "assistant", "content": "请在订单页申请售后。"},
            {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You're welcome."}]
    ids, labels = tm.encode_conversation(tokenizer, conv, 10_000)
    learned = [t for t, y in zip(ids, labels) if y != -100]
    assert all(y in (-100, t) for t, y in zip(ids, labels))
    text = tokenizer.decode(learned)
    assert text == " 请在订单页申请售后。" + tm.EOS + " You're welcome." + tm.EOS
    # what the node sends at generation time is exactly the prefix the model was taught on
    prompt = tokenizer.apply_chat_template(conv[:2], tokenize=False, add_generation_prompt=True)
    assert tokenizer.encode(prompt, add_special_tokens=False) == ids[:len(tokenizer.encode(prompt, add_special_tokens=False))]


def test_cache_key_follows_corpus_settings_and_seed(monkeypatch):
    key = tm._cache_key(0)
    assert key == tm._cache_key(0) and key != tm._cache_key(1)
    monkeypatch.setitem(tm.TRAINING, "steps", tm.TRAINING["steps"] + 1)
    assert tm._cache_key(0) != key


def test_a_cached_model_is_copied_not_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv("SEEKWATCH_CACHE", str(tmp_path / "cache"))
    cached = tm.trained_model_path()
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    (cached / "seekwatch-model.json").write_text(json.dumps({"weights": "trained"}))
    monkeypatch.setattr(tm, "train_support_model", lambda *a, **k: pytest.fail("retrained"))
    out = tm.make_tiny_model(tmp_path / "model", log=lambda m: None)
    assert (out / "config.json").read_text() == "{}"


def test_trained_weights_only_for_the_tiny_size():
    r = subprocess.run([sys.executable, "-m", "seekwatch", "make-tiny-model", "/nonexistent/x", "--size", "deepseek-7b",
                        "--weights", "trained"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and "random weights only" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
