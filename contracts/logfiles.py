"""Read a seekwatch log directory (``*.jsonl``) record by record, in write order.

Why it is strict about bad lines: the writer (``inference.session_log``) only ever appends
whole ``\\n``-terminated lines, so

* a last line without ``\\n`` is a *torn* write (the process was SIGKILLed mid-write, or
  the file is being written right now). It is never yielded as a record — a torn JSON
  prefix could even parse — it is reported as :class:`BadLine` with reason ``"torn"``;
* any other line that is not a JSON object is corruption. It is reported too (reason
  ``"invalid-json"``, ``"not-an-object"`` or ``"not-utf8"``), never silently skipped: the
  dashboard and the shipper surface ``reader.bad`` so data loss is visible.

File order: ``{prefix}-YYYY-MM-DD.NNNN.jsonl`` names sort by (day, sequence); other
``*.jsonl`` names follow in name order. Every yielded :class:`LogLine` carries its byte
offsets, so a shipper can resume after the last whole line it shipped.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^(?P<prefix>.+)-(?P<day>\d{4}-\d{2}-\d{2})\.(?P<seq>\d+)\.jsonl$")

BadReason = Literal["torn", "invalid-json", "not-an-object", "not-utf8"]


@dataclass(frozen=True)
class BadLine:
    """A line that is not a record: where it is and why, with a short excerpt."""

    path: Path
    line_no: int          # 1-based
    offset: int           # byte offset of the line's start
    reason: BadReason
    excerpt: str          # at most 120 characters, for the operator


@dataclass(frozen=True)
class LogLine:
    """A record with its position: ``end_offset`` is where the next line starts."""

    path: Path
    line_no: int
    offset: int
    end_offset: int
    record: dict[str, Any]


def _sort_key(p: Path) -> tuple:
    m = _NAME_RE.match(p.name)
    if m:
        return (0, m.group("day"), int(m.group("seq")), m.group("prefix"), p.name)
    return (1, "", 0, "", p.name)


def log_files(log_dir: str | os.PathLike[str], pattern: str = "*.jsonl") -> list[Path]:
    """The directory's log files in write order (missing directory → empty list)."""
    d = Path(log_dir)
    if not d.is_dir():
        return []
    return sorted((p for p in d.glob(pattern) if p.is_file()), key=_sort_key)


def iter_file(path: str | os.PathLike[str], offset: int = 0,
              on_bad: Callable[[BadLine], None] | None = None) -> Iterator[LogLine]:
    """Yield the records of one file from byte ``offset``; report bad lines to ``on_bad``."""
    p = Path(path)
    with open(p, "rb") as f:
        f.seek(offset)
        pos = offset
        line_no = 0
        for raw in f:
            line_no += 1
            start, pos = pos, pos + len(raw)
            if not raw.endswith(b"\n"):
                _report(on_bad, BadLine(p, line_no, start, "torn", _excerpt(raw)))
                break  # by construction the last chunk of the file
            body = raw.strip()
            if not body:
                continue
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                _report(on_bad, BadLine(p, line_no, start, "not-utf8", _excerpt(raw)))
                continue
            try:
                rec = json.loads(text)
            except ValueError:
                _report(on_bad, BadLine(p, line_no, start, "invalid-json", _excerpt(raw)))
                continue
            if not isinstance(rec, dict):
                _report(on_bad, BadLine(p, line_no, start, "not-an-object", _excerpt(raw)))
                continue
            yield LogLine(p, line_no, start, pos, rec)


def _excerpt(raw: bytes) -> str:
    return raw[:120].decode("utf-8", "replace").rstrip("\n")


def _report(on_bad: Callable[[BadLine], None] | None, bad: BadLine) -> None:
    if on_bad is not None:
        on_bad(bad)


@dataclass
class JsonlLogReader:
    """Iterate all records of a log directory; bad lines end up in :attr:`bad`.

    ``for rec in JsonlLogReader(dir): ...`` yields plain dicts; :meth:`lines` yields
    :class:`LogLine` with offsets. ``dataset`` filters on ``event.dataset``
    (``"seekwatch.session"`` / ``"seekwatch.feedback"``). With ``strict=True`` a
    mid-file corrupt line raises :class:`CorruptLogError` instead (torn last lines never do).
    """

    log_dir: str | os.PathLike[str]
    pattern: str = "*.jsonl"
    dataset: str | None = None
    strict: bool = False
    bad: list[BadLine] = field(default_factory=list)

    def _on_bad(self, b: BadLine) -> None:
        self.bad.append(b)
        if b.reason == "torn":
            log.warning("%s:%d: partial last line (%s…) set aside", b.path, b.line_no, b.excerpt[:40])
        else:
            log.error("%s:%d: %s line (%s…)", b.path, b.line_no, b.reason, b.excerpt[:40])
            if self.strict:
                raise CorruptLogError(f"{b.path}:{b.line_no}: {b.reason}")

    def files(self) -> list[Path]:
        return log_files(self.log_dir, self.pattern)

    def lines(self) -> Iterator[LogLine]:
        self.bad.clear()
        for p in self.files():
            try:
                for ll in iter_file(p, on_bad=self._on_bad):
                    if self.dataset is not None:
                        ev = ll.record.get("event")
                        if not isinstance(ev, dict) or ev.get("dataset") != self.dataset:
                            continue
                    yield ll
            except FileNotFoundError:  # removed by retention while we read
                continue

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for ll in self.lines():
            yield ll.record

    @property
    def torn(self) -> list[BadLine]:
        return [b for b in self.bad if b.reason == "torn"]

    @property
    def invalid(self) -> list[BadLine]:
        return [b for b in self.bad if b.reason != "torn"]


class CorruptLogError(Exception):
    """A line in the middle of a log file is not a JSON object (strict mode)."""


def read_records(log_dir: str | os.PathLike[str], dataset: str | None = None) -> tuple[list[dict[str, Any]], list[BadLine]]:
    """Convenience: all records of a directory plus the bad lines found."""
    r = JsonlLogReader(log_dir, dataset=dataset)
    recs = list(r)
    return recs, list(r.bad)
