"""DeepSeek-R1 style reasoning: split ``<think>…</think>`` out of the generated text into
``reasoning_content``, the field DeepSeek's API and NextChat use.

NextChat drops ``content`` when a delta also carries ``reasoning_content``, so the splitter
returns the two parts separately and the caller emits them in separate deltas.
"""
from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


class ReasoningSplitter:
    def __init__(self, starts_in_reasoning: bool = False):
        self.in_reasoning = starts_in_reasoning
        self.seen_any = starts_in_reasoning
        self.buf = ""

    def feed(self, text: str) -> tuple[str, str]:
        """Return ``(reasoning, content)`` safe to emit so far."""
        self.buf += text
        reasoning, content = [], []
        while self.buf:
            if not self.seen_any:
                stripped = self.buf.lstrip()
                if OPEN.startswith(stripped) and len(stripped) < len(OPEN):
                    break  # could still become "<think>"
                self.seen_any = True
                if stripped.startswith(OPEN):
                    self.in_reasoning = True
                    self.buf = stripped[len(OPEN):]
                continue
            if self.in_reasoning:
                i = self.buf.find(CLOSE)
                if i >= 0:
                    reasoning.append(self.buf[:i])
                    self.buf = self.buf[i + len(CLOSE):].lstrip("\n")
                    self.in_reasoning = False
                    continue
                keep = _partial_suffix(self.buf, CLOSE)
                reasoning.append(self.buf[:len(self.buf) - keep])
                self.buf = self.buf[len(self.buf) - keep:]
                break
            content.append(self.buf)
            self.buf = ""
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        buf, self.buf = self.buf, ""
        return (buf, "") if self.in_reasoning else ("", buf)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
