"""The dashboard masks every text it shows and fails closed: a masker failure hides the text."""
from __future__ import annotations

from dashboards import ui

from .conftest import LEAKY_PROMPT


def test_masks_text_from_another_writer():
    out = ui.masked(LEAKY_PROMPT)
    assert "13812345678" not in out and "zhang.san@example.com" not in out
    assert "[PHONE]" in out and "[EMAIL]" in out


def test_a_failing_rule_hides_the_text(monkeypatch):
    def broken(text):
        raise RuntimeError("a rule failed")

    monkeypatch.setattr(ui, "mask", broken)
    assert ui.masked(LEAKY_PROMPT) == ui.MASK_FAILED
    assert ui.masked(None) == ""
