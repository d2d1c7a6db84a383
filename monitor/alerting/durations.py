"""Durations as written in configs: ``15s``, ``5m``, ``4h``, ``1h30m``, ``250ms``, ``2d``, ``0``.

The same grammar as Prometheus, so a value can be copied between alertd's config and the
exported rules unchanged.
"""
from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
PATTERN = r"^(0|(\d+(\.\d+)?(ms|s|m|h|d|w))+)$"


def parse_duration(text: str | int | float) -> float:
    """Seconds in ``text``; raises ValueError with a readable message."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"negative duration: {text!r}")
        return float(text)
    s = str(text).strip()
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"not a duration: {text!r} (use e.g. 15s, 5m, 4h, 1h30m)")
    return total


def format_duration(seconds: float) -> str:
    """Shortest Prometheus-style spelling: 300 -> ``5m``, 90 -> ``1m30s``, 0.5 -> ``500ms``."""
    if seconds <= 0:
        return "0s"
    ms = int(round(seconds * 1000))
    out = []
    for unit, size in (("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000), ("ms", 1)):
        if ms >= size:
            n, ms = divmod(ms, size)
            out.append(f"{n}{unit}")
    return "".join(out)


def human(seconds: float) -> str:
    """Readable age for messages: ``3m20s``."""
    return format_duration(float(int(seconds))) if seconds >= 1 else format_duration(seconds)
