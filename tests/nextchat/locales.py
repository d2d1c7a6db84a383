"""NextChat's background-request templates, read straight from its locale sources.

``app/locales/<lang>.ts`` holds, under ``Store.Prompt``, the title request (``Topic``), the
memory-summary request (``Summarize``) and the prefix of the memory system message
(``History``) in each UI language NextChat ships. The tests compare these with the node's
``contracts/defaults/request-kinds.yaml`` so that a language added or reworded upstream fails
a test rather than being logged as user turns.
"""
from __future__ import annotations

import re
from pathlib import Path

_STR = r'''("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')'''
_TOPIC = re.compile(r"\bTopic:\s*" + _STR, re.S)
_SUMMARIZE = re.compile(r"\bSummarize:\s*" + _STR, re.S)
_HISTORY = re.compile(r"\bHistory:\s*\(content: string\)\s*=>\s*" + _STR + r"\s*\+\s*content", re.S)


def _unquote(lit: str) -> str:
    body = lit[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def _store_block(text: str) -> str:
    i = text.find("\n  Store: {")
    if i < 0:
        return ""
    j = text.find("\n  },", i)
    return text[i:j]


def locale_templates(src: Path) -> dict[str, dict[str, str]]:
    """``{lang: {"title", "summary", "history_prefix"}}`` for every locale file that defines them
    (a locale without its own ``Store.Prompt`` falls back to English in NextChat)."""
    out: dict[str, dict[str, str]] = {}
    for f in sorted((src / "app" / "locales").glob("*.ts")):
        if f.stem == "index":
            continue
        block = _store_block(f.read_text("utf-8"))
        t, s, h = _TOPIC.search(block), _SUMMARIZE.search(block), _HISTORY.search(block)
        if t and s and h:
            out[f.stem] = {"title": _unquote(t.group(1)), "summary": _unquote(s.group(1)),
                           "history_prefix": _unquote(h.group(1))}
    return out


def locale_files(src: Path) -> list[str]:
    return sorted(f.stem for f in (src / "app" / "locales").glob("*.ts") if f.stem != "index")
