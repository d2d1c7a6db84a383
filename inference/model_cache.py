"""Where seekwatch keeps models it builds itself (the trained tiny model, the refusal
classifier): ``$SEEKWATCH_CACHE/models`` or ``~/.cache/seekwatch/models``.

Why: generated models stay out of git and out of the work tree, yet a second test run, a
second demo or a second node start must not pay for training again. Each entry is named
by a hash of everything it is made from (data, configuration, code), so a change to any
of them builds a new entry instead of reusing a stale one.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable


def models_dir() -> Path:
    """The folder cached models live in (not created here)."""
    root = os.environ.get("SEEKWATCH_CACHE") or os.path.join(Path.home(), ".cache", "seekwatch")
    return Path(root) / "models"


def content_key(*parts: bytes | str | Path, extra: Iterable[str] = ()) -> str:
    """A short hash of files (``Path``) and values (``bytes`` / ``str``): the cache key."""
    h = hashlib.sha256()
    for part in parts:
        data = part.read_bytes() if isinstance(part, Path) else (
            part.encode() if isinstance(part, str) else part)
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    for e in extra:
        h.update(e.encode())
    return h.hexdigest()[:16]
