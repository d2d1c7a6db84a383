"""Refusal detector (precision/recall on the labelled corpus and, per language, on the
held-out set), the classifier's cache, its YAML config checks, and classify_status
precedence."""
from __future__ import annotations

import pytest

from contracts.config import ConfigError
from contracts.metrics import STATUSES
from inference.quality import RefusalDetector, classify_status, default_detector, normalise
from tests.instrumentation.refusal_corpus import CORPUS, evaluate
from tests.instrumentation.refusal_heldout import HELD_OUT, HELD_OUT_EN, HELD_OUT_ZH


def test_corpus_is_big_and_bilingual():
    assert len(CORPUS) >= 60
    zh = [t for t, _ in CORPUS if any("\u4e00" <= c <= "\u9fff" for c in t)]
    en = [t for t, _ in CORPUS if t not in zh]
    for group in (zh, en):
        labels = {lbl for t, lbl in CORPUS if t in group}
        assert labels == {True, False}


def test_precision_and_recall_on_corpus():
    r = evaluate()
    print(f"\nrefusal detector: precision={r['precision']:.3f} recall={r['recall']:.3f} "
          f"(tp={r['tp']} fp={r['fp']} fn={r['fn']} tn={r['tn']}, n={r['n']})")
    assert r["precision"] >= 0.9
    assert r["recall"] >= 0.9


def _is_zh(text: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" for c in text)


def test_held_out_set_is_big_bilingual_and_apart():
    """At least 300 replies, each language with both labels, none of them among the
    rules' own examples (CORPUS) or the classifier's training data."""
    from inference.refusal_classifier import load_training_set

    assert len(HELD_OUT) >= 300
    assert all(_is_zh(t) for t, _ in HELD_OUT_ZH) and not any(_is_zh(t) for t, _ in HELD_OUT_EN)
    for group in (HELD_OUT_ZH, HELD_OUT_EN):
        assert len(group) >= 150 and {y for _, y in group} == {True, False}
    texts = [t for t, _ in HELD_OUT]
    assert len(set(texts)) == len(texts)
    seen = {t for t, _ in CORPUS} | {t for t, _ in load_training_set()}
    assert not set(texts) & seen


@pytest.mark.parametrize("lang,corpus", [("zh", HELD_OUT_ZH), ("en", HELD_OUT_EN)])
def test_held_out_precision_and_recall_per_language(lang, corpus):
    r = evaluate(corpus=corpus)
    print(f"\nheld-out {lang}: precision={r['precision']:.3f} recall={r['recall']:.3f} "
          f"(tp={r['tp']} fp={r['fp']} fn={r['fn']} tn={r['tn']}, n={r['n']})")
    assert r["precision"] >= 0.9
    assert r["recall"] >= 0.9


def test_classifier_catches_what_no_rule_names_and_says_so():
    d = default_detector()
    text = "这个我真的帮不了您，您可以拨打人工客服热线。"   # no phrase rule covers 帮不了
    rules_only = RefusalDetector.from_yaml()
    rules_only.classifier = None
    assert not rules_only.is_refusal(text)
    m = d.match(text)
    assert m is not None and m.rule == "classifier" and m.matched
    assert not d.is_refusal("没问题，我这就帮您查询订单状态。")
    assert not d.is_refusal("当然可以，但我帮不了的部分会转给同事。")   # exclude rules veto it too


def test_classifier_is_trained_once_and_cached(tmp_path, monkeypatch):
    """First use trains and writes the cache entry; later loads read it; training is
    deterministic (the same weights as the model the shipped detector uses)."""
    from inference import refusal_classifier as rc

    monkeypatch.setenv("SEEKWATCH_CACHE", str(tmp_path))
    first = rc.load_or_train(threshold=0.7)
    files = list((tmp_path / "models").glob("refusal-classifier-*.json"))
    assert len(files) == 1 and files[0].name == f"refusal-classifier-{rc.model_key()}.json"
    monkeypatch.setattr(rc.RefusalClassifier, "train", classmethod(lambda *a, **k: pytest.fail("retrained")))
    again = rc.load_or_train(threshold=0.7)
    assert again.weights == first.weights and again.bias == first.bias and again.threshold == 0.7
    assert first.weights == default_detector().classifier.weights


def test_classifier_config_is_checked(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("version: 1\nstart: []\nclassifier: {enabled: true, threshold: 1.5}\n")
    with pytest.raises(ConfigError, match="classifier") as e:
        RefusalDetector.from_yaml(f)
    assert "\n" not in str(e.value)
    f.write_text("version: 1\nstart: []\nclassifier: {enabled: false}\n")
    assert RefusalDetector.from_yaml(f).classifier is None


@pytest.mark.parametrize("text", [
    "抱歉，我无法帮助您。", "I can't help with that.", "作为一个AI，我无法访问互联网。",
    "I'm sorry, but I cannot do that."])
def test_seed_examples_detected(text):
    m = default_detector().match(text)
    assert m is not None and m.rule.startswith(("start", "anywhere"))


def test_refusal_late_in_long_answer_is_not_start_match():
    long_answer = "以下是详细步骤。" * 40 + "抱歉，我无法提供更多信息。"
    assert not default_detector().is_refusal(long_answer)


def test_normalise():
    assert normalise("I\u2019M  Sorry，我ＡＢ") == "i'm sorry,我ab"


def test_config_schema_errors_are_one_line(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("version: 1\nstart:\n  - phrase: x\n    pattern: y\n")
    with pytest.raises(ConfigError) as e:
        RefusalDetector.from_yaml(bad)
    assert str(e.value).startswith(str(bad)) and "\n" not in str(e.value)
    bad.write_text("version: 1\nstart:\n  - pattern: '(unclosed'\n")
    with pytest.raises(ConfigError, match=r"start\.0\.pattern: invalid regular expression"):
        RefusalDetector.from_yaml(bad)
    bad.write_text("version: 2\nstart: []\n")
    with pytest.raises(ConfigError):
        RefusalDetector.from_yaml(bad)
    with pytest.raises(ConfigError, match="no such file"):
        RefusalDetector.from_yaml(tmp_path / "missing.yaml")


def test_custom_phrases(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("version: 1\nstart_window_chars: 20\nstart:\n  - phrase: '恕难从命'\n"
                 "anywhere:\n  - phrase: 'computer says no'\n")
    d = RefusalDetector.from_yaml(f)
    assert d.is_refusal("恕难从命，请见谅")
    assert d.is_refusal("Well... " + "x" * 100 + " Computer says NO.")
    assert not d.is_refusal("x" * 30 + "恕难从命")      # outside the start window
    assert not d.is_refusal('他说"computer says no"')   # quoted


class _Never(RefusalDetector):
    def __init__(self):
        super().__init__({"version": 1, "start": []})


@pytest.mark.parametrize("kw,expected", [
    (dict(finish_reason="stop", error=None, aborted=False, response_text="好的，步骤如下"), "completed"),
    (dict(finish_reason="stop", error=None, aborted=False, response_text="抱歉，我无法帮助您。"), "refused"),
    (dict(finish_reason="content_filter", error=None, aborted=False, response_text=""), "refused"),
    (dict(finish_reason="length", error=None, aborted=False, response_text="抱歉，我无法"), "truncated"),
    (dict(finish_reason=None, error=RuntimeError("cuda oom"), aborted=False, response_text=""), "error"),
    (dict(finish_reason="error", error=None, aborted=False, response_text=""), "error"),
    (dict(finish_reason=None, error=RuntimeError("cancelled"), aborted=True, response_text="部分"), "aborted"),
    (dict(finish_reason="abort", error=None, aborted=False, response_text=""), "aborted"),
    (dict(finish_reason=None, error="queue full", aborted=False, response_text="", http_status=429), "rejected"),
    (dict(finish_reason=None, error="bad", aborted=False, response_text="", http_status=400), "rejected"),
    (dict(finish_reason=None, error="not ready", aborted=False, response_text="", http_status=503), "rejected"),
    (dict(finish_reason=None, error="boom", aborted=False, response_text="", http_status=500), "error"),
    (dict(finish_reason=None, error="too long", aborted=False, response_text="", generation_started=False), "rejected"),
])
def test_classify_status(kw, expected):
    s = classify_status(detector=None, **kw)
    assert s == expected and s in STATUSES


def test_classify_status_with_disabled_detector():
    assert classify_status("stop", None, False, "I can't help with that.", _Never()) == "completed"


def test_a_rule_runs_only_on_text_in_its_language():
    """lang: en rules are not tried on text without Latin letters, zh rules not on text
    without Chinese characters; any rules run on everything; mixed text runs all."""
    d = RefusalDetector({"version": 1, "start": [
        {"phrase": "!!", "lang": "en"}, {"phrase": "??", "lang": "zh"}, {"phrase": "##", "lang": "any"}]})
    assert not d.is_refusal("!! 好的")              # an en rule on Chinese-only text
    assert d.is_refusal("!! ok")
    assert not d.is_refusal("?? ok")               # a zh rule on Latin-only text
    assert d.is_refusal("?? 好的")
    assert d.is_refusal("## 123") and d.is_refusal("## ok") and d.is_refusal("## 好")
    assert d.is_refusal("!! 好的 ok") and d.is_refusal("?? 好的 ok")
    shipped = default_detector()
    assert shipped.is_refusal("抱歉，我无法帮助您。") and shipped.is_refusal("I'm sorry, but I can't help with that.")


def _reference_normalise(t: str) -> str:
    import unicodedata
    from inference.quality import _QUOTES, _SPACES
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", t).translate(_QUOTES).lower()).strip()


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aZ 　\t，！？：；（）“”‘’Ｉｍ我无法。.,'\"\u00a0ﬁ①")), max_size=40))
def test_fast_normalise_equals_reference(text):
    """The shortcut normalise() gives exactly NFKC → quotes → lower → single spaces."""
    assert normalise(text) == _reference_normalise(text)
