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
