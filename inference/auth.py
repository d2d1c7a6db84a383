"""API keys: read from a file (one per line) or an environment variable (comma-separated),
kept only as SHA-256 digests, compared in constant time.

NextChat sends an empty ``Authorization`` header when the user set no key: with keys off
that is accepted; with keys on it gets a 401 like any wrong key.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from contracts.config import ConfigError


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    def __init__(self, keys: list[str] | None = None, key_file: str | None = None, env_var: str | None = None):
        self._digests = [_digest(k) for k in (keys or []) if k]
        self.key_file, self.env_var = key_file, env_var
        self._mtime = _mtime(key_file)

    @classmethod
    def load(cls, key_file: str | None, env_var: str | None) -> "ApiKeys":
        return cls(cls._read(key_file, env_var), key_file, env_var)

    def reload(self) -> bool:
        """Re-read the key file (and variable) in place, so keys rotate without a restart.
        A file that became unreadable or empty keeps the old keys (and says so) rather than
        locking everyone out or letting everyone in. Returns True when the keys changed."""
        import logging

        self._mtime = _mtime(self.key_file)
        try:
            digests = [_digest(k) for k in self._read(self.key_file, self.env_var)]
        except ConfigError as exc:
            logging.getLogger("seekwatch.auth").error("API keys not reloaded: %s", exc)
            return False
        changed = digests != self._digests
        self._digests = digests
        if changed:
            logging.getLogger("seekwatch.auth").info("API keys reloaded: %d key(s)", len(digests))
        return changed

    def reload_if_changed(self) -> bool:
        """Reload when the key file's modification time moved (polled by the node)."""
        if self.key_file and _mtime(self.key_file) != self._mtime:
            return self.reload()
        return False

    @staticmethod
    def _read(key_file: str | None, env_var: str | None) -> list[str]:
        keys: list[str] = []
        if key_file:
            try:
                text = Path(key_file).read_text("utf-8")
            except OSError as exc:
                raise ConfigError(f"{key_file}: cannot read API key file: {exc.strerror or exc}") from None
            keys += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
            if not keys:
                raise ConfigError(f"{key_file}: API key file holds no key")
        if env_var and os.environ.get(env_var):
            keys += [k.strip() for k in os.environ[env_var].split(",") if k.strip()]
        return keys

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> bool:
        """True when keys are off, or the ``Authorization: Bearer <key>`` value is a known key."""
        if not self._digests:
            return True
        if not authorization:
            return False
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        got = _digest(token.strip())
        ok = False
        for d in self._digests:  # no early exit: constant time over the key set
            ok |= hmac.compare_digest(got, d)
        return ok


def _mtime(path: str | None) -> float | None:
    if not path:
        return None
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None
