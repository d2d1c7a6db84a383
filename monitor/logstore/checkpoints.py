"""The shipper's state directory: the checkpoint file (how far each log file has been
acknowledged by the store) and the lock that keeps a second shipper out.

Checkpoint writes are atomic: temp file, fsync, rename, fsync of the directory, so a crash
leaves either the old or the new checkpoint, never a torn one. The format (version 1):
``{"version": 1, "files": {"dev:inode": {"path", "offset", "fingerprint"}}}``.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path

from monitor.logstore.ship_errors import ShipperError

CHECKPOINT_FILE = "checkpoints.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class CheckpointStore:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / CHECKPOINT_FILE
        self._lock_fh = None

    def lock(self) -> None:
        """Take the state directory for this process; :class:`ShipperError` if another has it."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.state_dir / "lock", "a+")  # noqa: SIM115 - held for the shipper's life
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise ShipperError(f"another shipper is using {self.state_dir}") from None
            raise
        self._lock_fh = fh

    def unlock(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    def load(self) -> dict[str, dict]:
        """The saved per-file entries (empty before the first checkpoint)."""
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ShipperError(f"unreadable checkpoint file {self.path}: {exc}") from None
        return dict(data.get("files", {}))

    def save(self, files: dict[str, dict]) -> None:
        atomic_write_json(self.path, {"version": 1, "files": files})
