"""The session-log file format, for every reader: names, discovery, write order, and reading
whole lines record by record.

Why one module: the node writes the files (``inference.session_log``); the shipper, the
dashboard and NextChat's balance query read them. If each had its own idea of which files
exist and in which order, a rotated file could be counted by one and skipped by another.

Names: the node writes ``{prefix}-YYYY-MM-DD.NNNN.jsonl`` (UTC day, sequence of at least
four digits, :func:`file_name`). Every reader takes every ``*.jsonl`` file and its numbered
rotations ``*.jsonl.N`` (logrotate's names; compressed rotations are not read) anywhere under
the log directory (:func:`is_log_file_name`, :func:`log_files`).

Write order (:func:`sort_key`): node names by (day, sequence); a rotation ``x.jsonl.N`` before
``x.jsonl.M`` when N > M, and before ``x.jsonl`` itself; other names by name.

Following files as they grow, rotate and get truncated is :mod:`contracts.logtail`.

Why it is strict about bad lines: the writer only ever appends whole ``\\n``-terminated
lines, so

* a last line without ``\\n`` is a *torn* write (the process was SIGKILLed mid-write, or
  the file is being written right now). It is never yielded as a record — a torn JSON
  prefix could even parse — it is reported as :class:`BadLine` with reason ``"torn"``;
* any other line that is not a JSON object is corruption. It is reported too (reason
  ``"invalid-json"``, ``"not-an-object"`` or ``"not-utf8"``), never silently skipped: the
  dashboard and the shipper surface ``reader.bad`` so data loss is visible.

Every yielded :class:`LogLine` carries its byte offsets, so a reader can resume after the
last whole line it used.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^(?P<prefix>.+)-(?P<day>\d{4}-\d{2}-\d{2})\.(?P<seq>\d+)\.jsonl$")
_ROTATED_RE = re.compile(r"^(?P<base>.+\.jsonl)\.(?P<n>\d+)$")


def file_name(prefix: str, day: str, seq: int) -> str:
    """The name the node gives its ``seq``-th file of UTC ``day`` (``YYYY-MM-DD``)."""
    return f"{prefix}-{day}.{seq:04d}.jsonl"


def file_name_re(prefix: str) -> re.Pattern[str]:
    """Matches the node's own file names for ``prefix``: groups (day, sequence)."""
    return re.compile(rf"^{re.escape(prefix)}-(\d{{4}}-\d{{2}}-\d{{2}})\.(\d{{4,}})\.jsonl$")


def is_log_file_name(name: str) -> bool:
    """``*.jsonl`` or a numbered rotation ``*.jsonl.N``."""
    if name.endswith(".jsonl"):
        return True
    base, dot, suffix = name.rpartition(".")
    return bool(dot) and suffix.isdigit() and base.endswith(".jsonl")


def sort_key(p: Path) -> tuple:
    """Write order (see the module docstring)."""
    name, rotation = p.name, 0
    m = _ROTATED_RE.match(name)
    if m:
        name, rotation = m.group("base"), -int(m.group("n"))
    m = _NAME_RE.match(name)
    if m:
        return (0, m.group("day"), int(m.group("seq")), m.group("prefix"), rotation, str(p))
    return (1, "", 0, name, rotation, str(p))


def log_files(log_dir: str | os.PathLike[str], exclude: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """Every log file under ``log_dir`` (sub-folders included, ``exclude`` folders not), in
    write order. A missing directory has none."""
    root = Path(log_dir)
    if not root.is_dir():
        return []
    skip = {os.path.abspath(e) for e in exclude}
    out: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.abspath(os.path.join(folder, d)) not in skip]
        for name in names:
            if is_log_file_name(name):
                p = Path(folder) / name
                if p.is_file():
                    out.append(p)
    return sorted(out, key=sort_key)


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
        return log_files(self.log_dir)

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
