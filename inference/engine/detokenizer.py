"""Incremental detokenization and stop strings.

Byte-level BPE splits a Chinese character across tokens, so decoding token by token would
emit U+FFFD. The incremental decoder (the approach vLLM uses) decodes a small window and only
releases text once it no longer ends in a partial character. Stop strings are matched on the
released text, holding back just enough characters to never emit the start of a stop string.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass
class IncrementalDetokenizer:
    tokenizer: Any
    token_ids: list[int] = field(default_factory=list)
    prefix_offset: int = 0
    read_offset: int = 0

    def add(self, token_ids: Sequence[int]) -> str:
        """Append token ids; return the text they complete (may be empty)."""
        self.token_ids.extend(token_ids)
        decode = self.tokenizer.decode
        prefix_text = decode(self.token_ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        new_text = decode(self.token_ids[self.prefix_offset:], skip_special_tokens=True)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.token_ids)
            return new_text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        """Text still held back at the end (a trailing partial character is dropped)."""
        decode = self.tokenizer.decode
        prefix_text = decode(self.token_ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        new_text = decode(self.token_ids[self.prefix_offset:], skip_special_tokens=True)
        self.prefix_offset = self.read_offset = len(self.token_ids)
        return new_text[len(prefix_text):].rstrip("\ufffd")


class StopMatcher:
    """Cuts a text stream at the first stop string, never emitting any part of it."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Return the text safe to emit; sets ``stopped`` once a stop string is seen."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending, self.stopped = self.pending[:cut], "", True
            return out
        if self.hold and len(self.pending) > self.hold:
            out, self.pending = self.pending[:-self.hold], self.pending[-self.hold:]
            return out
        if not self.hold:
            out, self.pending = self.pending, ""
            return out
        return ""

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out
