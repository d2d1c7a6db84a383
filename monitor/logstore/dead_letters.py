"""The shipper's dead-letter file: lines that will never be indexed, with the reason, so that
nothing is dropped silently.

One builder (:func:`dead_letter`) makes every entry — a malformed line, a line the store
refused, a torn or incomplete last line — so each has the same fields: ``time``, ``file``,
``offset`` (the byte where the line starts), ``reason`` and the ``line`` itself (decoded,
invalid UTF-8 replaced). Entries are appended as JSON lines and fsynced before the offset
they cover is checkpointed.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from contracts.jsonline import dumps_line

log = logging.getLogger("seekwatch.ship")

DEAD_LETTER_FILE = "dead-letter.ndjson"


def dead_letter(path: str, offset: int, reason: str, raw: bytes) -> dict:
    """One dead-letter entry."""
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "file": path, "offset": offset,
            "reason": reason, "line": raw.decode("utf-8", errors="replace")}


class DeadLetterWriter:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, entries: list[dict]) -> int:
        """Append ``entries`` (in file order) and fsync; returns how many were written."""
        if not entries:
            return 0
        with open(self.path, "a", encoding="utf-8") as fh:
            for e in entries:
                fh.write(dumps_line(e) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        first = entries[0]
        more = f" (and {len(entries) - 1} more in this batch)" if len(entries) > 1 else ""
        log.warning("dead-lettered a line of %s at offset %s: %s%s -> %s", first["file"], first["offset"],
                    first["reason"][:300], more, self.path)
        return len(entries)
