"""Every UI language NextChat ships: its title and summary requests are recognised as such,
and its memory message links back to the summary, read from NextChat's own locale files
(the source the browser suite builds), so an upstream change fails here."""
from __future__ import annotations

import pytest

from contracts.config import ConfigError
from inference.request_kinds import RequestKinds, default_request_kinds
from inference.session_ids import ConversationLinks, identify

from .build import BuildError, source_dir
from .locales import locale_files, locale_templates


@pytest.fixture(scope="module")
def templates():
    try:
        src = source_dir()
    except BuildError as exc:
        pytest.fail(str(exc), pytrace=False)
    found = locale_templates(src)
    # every locale file defines its own prompts (none falls back to English)
    assert sorted(found) == locale_files(src) and len(found) >= 20
    return found


def test_every_language_is_recognised(templates):
    kinds = default_request_kinds()
    for lang, t in templates.items():
        history = [("user", "一个问题 a question"), ("assistant", "an answer")]
        assert kinds.classify(history + [("user", t["title"])]) == "title", lang
        assert kinds.classify(history + [("system", t["summary"])]) == "summary", lang
        assert kinds.classify(history + [("user", "a question")]) == "chat", lang
        assert kinds.memory_text("system", t["history_prefix"] + "earlier summary") == "earlier summary", lang


def test_a_summary_reply_links_the_memory_message_in_every_language(templates):
    kinds = default_request_kinds()
    for lang, t in templates.items():
        links = ConversationLinks()
        links.remember_summary("the summary text", "sess-1", 5)
        links.note_turn("sess-1", 6)
        # a window without any reply the node knows (e.g. all later replies were stopped)
        ident = identify({}, None, [("system", t["history_prefix"] + "the summary text"), ("user", "next")],
                         kinds, links)
        assert (ident.session_id, ident.turn_index, ident.request_kind) == ("sess-1", 7, "chat"), lang


def test_a_bad_templates_file_is_one_line(tmp_path):
    bad = tmp_path / "kinds.yaml"
    bad.write_text("version: 1\nclients:\n  - name: nextchat\n    templates:\n      - lang: no\n"
                   "        title: short\n        summary: s\n        history_prefix: h\n")
    with pytest.raises(ConfigError) as err:
        RequestKinds.from_yaml(bad)
    assert str(err.value).startswith(f"{bad}: clients.0.templates.0.") and "\n" not in str(err.value)
