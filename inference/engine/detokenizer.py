"""Incremental detokenization and stop strings.

Byte-level BPE splits a Chinese character across tokens, so decoding token by token would
emit U+FFFD. The incremental decoder (the approach vLLM uses) decodes a small window and only
releases text once it no longer ends in a partial character. Stop strings are matched on the
released text, holding back just enough characters to never emit the start of a stop string.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any, Sequence


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte is shown as one printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_CHAR_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}
_TABLES: dict[int, list[bytes]] = {}


def _byte_table(tokenizer: Any) -> list[bytes]:
    """Token id → the bytes it stands for (b"" for special tokens), built once per tokenizer."""
    key = id(tokenizer)
    if key not in _TABLES:
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        table = []
        for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
            if i in added:
                table.append(b"" if added[i].special else added[i].content.encode("utf-8"))
            elif tok is None:
                table.append(b"")
            else:
                known = all(c in _CHAR_TO_BYTE for c in tok)
                table.append(bytes(_CHAR_TO_BYTE[c] for c in tok) if known else tok.encode("utf-8"))
        _TABLES[key] = table
    return _TABLES[key]


class ByteLevelDetokenizer:
    """O(1) per token for byte-level BPE tokenizers (DeepSeek's, GPT-2's): token bytes go
    through an incremental UTF-8 decoder, which holds a character split across tokens until
    it is complete. The generic window decoder below calls ``tokenizer.decode`` twice per
    token; under a batch of hundreds of streams that cost sits on the event loop."""

    def __init__(self, tokenizer: Any):
        self.table = _byte_table(tokenizer)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_ids: Sequence[int]) -> str:
        table = self.table
        data = b"".join(table[i] if 0 <= i < len(table) else b"" for i in token_ids)
        return self.decoder.decode(data)

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True).rstrip("\ufffd")


def make_detokenizer(tokenizer: Any):
    """The fastest exact incremental decoder for ``tokenizer``."""
    from tokenizers import decoders

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and isinstance(backend.decoder, decoders.ByteLevel):
        return ByteLevelDetokenizer(tokenizer)
    return IncrementalDetokenizer(tokenizer)


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
