"""Quality signals of a turn: the refusal / negative-answer detector and the turn status.

Why: turn completion needs to know whether a turn *helped*. A 200 OK that says
"抱歉，我无法帮助您" is not a completed turn (否定回答检测). The detector runs on every
turn in the node, so it must be cheap (microseconds) and explainable (which rule fired):
phrase/regex rules first, tunable by ops in YAML (``contracts/defaults/refusals.yaml``),
checked against a JSON Schema at load so a typo is one clear line, not a silent no-op;
then, for the refusals no phrase list names, a small trained classifier
(``inference.refusal_classifier``, character and word n-grams of the opening, ~20 µs).

:func:`classify_status` maps how a turn ended onto ``contracts.metrics.STATUSES``; the
node uses the result for ``requests_total{status}`` and the log record's ``status``.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from contracts.config import ConfigError, load_yaml_config
from contracts.defaults import default_config_path
from contracts.metrics import STATUSES

_RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "phrase": {"type": "string", "minLength": 1},
        "pattern": {"type": "string", "minLength": 1},
        "lang": {"enum": ["zh", "en", "any"]},
        "note": {"type": "string"},
    },
    "oneOf": [{"required": ["phrase"]}, {"required": ["pattern"]}],
}

#: JSON Schema of refusals.yaml.
REFUSALS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "start"],
    "properties": {
        "version": {"const": 1},
        "start_window_chars": {"type": "integer", "minimum": 1, "maximum": 100000},
        "start": {"type": "array", "items": _RULE_SCHEMA},
        "anywhere": {"type": "array", "items": _RULE_SCHEMA},
        "exclude": {"type": "array", "items": _RULE_SCHEMA},
        "classifier": {
            "type": "object",
            "additionalProperties": False,
            "required": ["enabled"],
            "properties": {
                "enabled": {"type": "boolean"},
                "threshold": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            },
        },
    },
}

#: What a ``lang: en`` rule needs in the text (a Latin letter) and a ``lang: zh`` rule (a
#: CJK ideograph); a rule whose language is absent from the text is not tried.
_HAS_LATIN = re.compile(r"[a-z]").search
_HAS_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]").search

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201b": "'", "\u2032": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"'})
_SPACES = re.compile(r"[ \t\u3000\u00a0]+")


#: The full-width punctuation Chinese text is full of, replaced before the (slow) NFKC pass,
#: so that for typical text ``is_normalized`` is true and NFKC itself is skipped.
_FULLWIDTH = (("，", ","), ("！", "!"), ("？", "?"), ("：", ":"), ("；", ";"), ("（", "("),
              ("）", ")"), ("\u3000", " "))
_QUOTE_CHARS = "\u2018\u2019\u201b\u2032\u201c\u201d\u201e\u00ab\u00bb"


def normalise(text: str) -> str:
    """The form rules are written against: NFKC, lower case, straight quotes, single spaces.

    Same result as ``NFKC → quotes → lower → collapse spaces``, done with cheap checks first
    (this runs on every turn)."""
    for a, b in _FULLWIDTH:
        if a in text:
            text = text.replace(a, b)
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    if any(q in text for q in _QUOTE_CHARS):
        text = text.translate(_QUOTES)
    t = text.lower()
    if "  " in t or "\t" in t or "\u00a0" in t:
        t = _SPACES.sub(" ", t)
    return t.strip()


def _light_normalise(text: str) -> str:
    """What ``anywhere`` rules read: lower case and straight quotes only — NFKC over a long
    response costs ~100 µs, and these rules (explicit declines) need no width folding."""
    t = text.lower()
    if any(q in t for q in _QUOTE_CHARS):
        t = t.translate(_QUOTES)
    return t


@dataclass(frozen=True)
class Rule:
    section: str        # start | anywhere | exclude
    index: int
    regex: re.Pattern[str]
    source: str         # the phrase or pattern as written
    lang: str = "any"

    @property
    def name(self) -> str:
        return f"{self.section}[{self.index}]"


@dataclass(frozen=True)
class RefusalMatch:
    """Why a response was judged a refusal: the rule and the matched text."""

    rule: str
    matched: str


def _inside_quotes(text: str, pos: int) -> bool:
    before = text[:pos]
    return before.count('"') % 2 == 1 or before.count("「") > before.count("」")


class RefusalDetector:
    """Detects refusals / negative answers (Chinese and English) from configurable rules."""

    def __init__(self, config: Mapping[str, Any], source: str = "<config>") -> None:
        from contracts.config import check_against_schema

        check_against_schema(config, REFUSALS_SCHEMA, source)
        self.source = source
        self.start_window = int(config.get("start_window_chars", 160))
        self.start = self._compile("start", config.get("start", []), source)
        self.anywhere = self._compile("anywhere", config.get("anywhere", []), source)
        self.exclude = self._compile("exclude", config.get("exclude", []), source)
        clf = config.get("classifier") or {}
        self.classifier = None
        if clf.get("enabled"):
            from inference.refusal_classifier import load_or_train

            self.classifier = load_or_train(threshold=float(clf.get("threshold", 0.5)))

    @staticmethod
    def _compile(section: str, rules: list[Mapping[str, Any]], source: str) -> list[Rule]:
        out = []
        for i, r in enumerate(rules):
            if "phrase" in r:
                text = r["phrase"]
                regex_src = re.escape(normalise(text))
            else:
                text = regex_src = r["pattern"]
            try:
                rx = re.compile(regex_src)
            except re.error as exc:
                raise ConfigError(f"{source}: {section}.{i}.pattern: invalid regular expression: {exc}") from None
            out.append(Rule(section, i, rx, text, r.get("lang", "any")))
        return out

    @classmethod
    def from_yaml(cls, path: str | Path | None = None) -> "RefusalDetector":
        """Load and schema-check a rules file (default: the shipped refusals.yaml).
        Raises :class:`contracts.config.ConfigError` with one actionable line."""
        p = Path(path) if path is not None else default_config_path("refusals")
        data = load_yaml_config(p)
        return cls(data, str(p))

    @staticmethod
    def _applicable(rules: list[Rule], text: str) -> list[Rule]:
        """The rules whose language occurs in ``text``: most answers are in one language,
        and skipping the other language's rules halves the detector's cost (it runs on
        every turn)."""
        latin, cjk = _HAS_LATIN(text) is not None, _HAS_CJK(text) is not None
        if latin and cjk:
            return rules
        return [r for r in rules if not ((r.lang == "en" and not latin) or (r.lang == "zh" and not cjk))]

    @staticmethod
    def _first_unquoted(rule: Rule, text: str) -> re.Match[str] | None:
        for m in rule.regex.finditer(text):
            # A quoted message ("抱歉，我无法连接" in an error string) is not the model refusing.
            if not (_inside_quotes(text, m.start()) or _inside_quotes(text, m.end())):
                return m
        return None

    def match(self, response: str | None) -> RefusalMatch | None:
        """The first rule that marks ``response`` as a refusal, or None."""
        if not response:
            return None
        # Normalise only what the start rules read (NFKC can change lengths, so take a
        # margin and cut after); the whole text gets the cheap part (lower case, quotes).
        window = normalise(response[: self.start_window * 2 + 16])[: self.start_window]
        for rule in self.exclude:
            m = rule.regex.match(window)
            if m:
                return None
        for rule in self._applicable(self.start, window):
            m = self._first_unquoted(rule, window)
            if m:
                return RefusalMatch(rule.name, m.group(0))
        if self.anywhere:
            text = _light_normalise(response)
            for rule in self._applicable(self.anywhere, text):
                m = self._first_unquoted(rule, text)
                if m:
                    return RefusalMatch(rule.name, m.group(0))
        if self.classifier is not None and self.classifier.is_refusal(response):
            return RefusalMatch("classifier", " ".join(self.classifier.strongest(response)))
        return None

    def is_refusal(self, response: str | None) -> bool:
        """True when the response refuses or declines (status ``refused``)."""
        return self.match(response) is not None


_DEFAULT: RefusalDetector | None = None


def default_detector() -> RefusalDetector:
    """The detector built from the shipped refusals.yaml (loaded once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = RefusalDetector.from_yaml()
    return _DEFAULT


#: finish_reason values (OpenAI, vLLM, DeepSeek API) and what they mean for the status.
_ABORT_REASONS = frozenset({"abort", "aborted", "cancelled", "canceled"})
_ERROR_REASONS = frozenset({"error"})
_TRUNCATED_REASONS = frozenset({"length", "max_tokens"})
_FILTERED_REASONS = frozenset({"content_filter"})


def classify_status(finish_reason: str | None, error: BaseException | str | Mapping[str, Any] | None,
                    aborted: bool, response_text: str | None,
                    detector: RefusalDetector | None = None, *,
                    http_status: int | None = None, generation_started: bool = True) -> str:
    """Map how a turn ended to one of ``contracts.metrics.STATUSES``.

    Precedence (first that applies):

    1. ``rejected`` — turned away before generation: ``http_status`` 4xx (400 bad request,
       401, 413, 429 queue full) or 503 not ready, or an error with
       ``generation_started=False``. It never reached the model.
    2. ``aborted`` — the client went away (``aborted=True`` or finish_reason ``abort``).
       Wins over ``error``: cancelling a generation often surfaces as an exception.
    3. ``error`` — ``error`` is set, ``http_status`` >= 500, or finish_reason ``error``.
    4. ``truncated`` — finish_reason ``length``: max_tokens (or the context) cut the answer.
    5. ``refused`` — finish_reason ``content_filter``, or the detector flags the text.
    6. ``completed``.

    ``detector=None`` uses the shipped rules; pass ``False``-y via a detector with no rules
    to disable refusal detection.
    """
    fr = (finish_reason or "").lower() or None
    if http_status is not None and (400 <= http_status < 500 or http_status == 503):
        return "rejected"
    if error is not None and not generation_started:
        return "rejected"
    if aborted or fr in _ABORT_REASONS:
        return "aborted"
    if error is not None or (http_status is not None and http_status >= 500) or fr in _ERROR_REASONS:
        return "error"
    if fr in _TRUNCATED_REASONS:
        return "truncated"
    if fr in _FILTERED_REASONS:
        return "refused"
    det = detector if detector is not None else default_detector()
    if det.is_refusal(response_text):
        return "refused"
    return "completed"


assert set(("completed", "error", "aborted", "truncated", "refused", "rejected")) == set(STATUSES)
