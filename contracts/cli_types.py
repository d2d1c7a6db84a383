"""argparse ``type=`` validators shared by the command-line tools, so a bad flag value gives
the same one-line error (argparse's exit status 2) whichever tool it was given to."""
from __future__ import annotations

import argparse
from typing import Callable


def positive_int(noun: str = "an integer") -> Callable[[str], int]:
    """A validator for a whole number of at least 1; ``noun`` names what was expected
    (``"a whole number of days"``) in the message for a value that is not one."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not {noun}") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"{value} must be at least 1")
        return n

    return parse


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def positive_duration(value: str) -> float:
    """Seconds from ``300``, ``90s``, ``5m``, ``1h30m`` (Prometheus' spelling); more than 0."""
    import re

    text = value.strip()
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    elif parts and "".join(n + u for n, u in parts) == text:
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration (e.g. 300, 90s, 5m, 1h30m)")
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be longer than 0")
    return seconds
