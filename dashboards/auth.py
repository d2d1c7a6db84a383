"""Dashboard login. The dashboard shows (masked) conversations, so it requires a login by
default:

* a **password** login: user names and scrypt password hashes in a small YAML file given with
  ``seekwatch dashboard --auth-config FILE``; hashes are made with
  ``seekwatch dashboard hash-password`` (reads the password twice from the terminal, or once
  from stdin when it is not a terminal) — the password itself is never stored;
* or **Streamlit's OIDC login** (``st.login``; needs ``Authlib`` and an ``[auth]`` section in
  ``.streamlit/secrets.toml``), selected by an ``oidc:`` section in the same file, optionally
  limited to e-mail addresses or domains;
* or, only when said explicitly, ``--insecure-no-auth``: no login, logged loudly at start and
  on every new browser session, and shown in the sidebar.

Without any of them ``seekwatch dashboard`` refuses to start (one line, exit 2), and the app
itself (``streamlit run dashboards/app.py`` by hand) shows nothing but a notice.

Config file::

    # password login
    users:
      ops: "scrypt$16384$8$1$<salt, base64>$<hash, base64>"
      alice: "pbkdf2_sha256$600000$<salt>$<hash>"      # also accepted
    # or OIDC (instead of users)
    oidc:
      provider: null               # the [auth.<provider>] of secrets.toml; null = the [auth] default
      allowed_emails: [ops@example.com]
      allowed_domains: [example.com]

The app reads the choice from ``SEEKWATCH_DASHBOARD_AUTH_CONFIG`` /
``SEEKWATCH_DASHBOARD_INSECURE_NO_AUTH`` (set by ``seekwatch dashboard``). A successful
password login lasts for the browser session (Streamlit's session state: a page reload asks
again). Failed logins are logged with the user name (never the password) and answered after a
one-second delay.
"""
from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("seekwatch.dashboard.auth")

ENV_CONFIG = "SEEKWATCH_DASHBOARD_AUTH_CONFIG"
ENV_INSECURE = "SEEKWATCH_DASHBOARD_INSECURE_NO_AUTH"
SESSION_KEY = "_seekwatch_login"
FAIL_DELAY_S = 1.0
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
MIN_PASSWORD_LEN = 8

INSECURE_BANNER = ("seekwatch dashboard: WARNING: --insecure-no-auth: NO LOGIN. Anyone who can reach "
                   "this port sees users' conversations. Use --auth-config for anything but a local demo.")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "users": {"type": "object", "minProperties": 1,
                  "additionalProperties": {"type": "string", "minLength": 1},
                  "propertyNames": {"minLength": 1, "maxLength": 64}},
        "oidc": {"type": ["object", "null"], "additionalProperties": False,
                 "properties": {"provider": {"type": ["string", "null"]},
                                "allowed_emails": {"type": "array", "items": {"type": "string"}},
                                "allowed_domains": {"type": "array", "items": {"type": "string"}}}},
    },
    "oneOf": [{"required": ["users"]}, {"required": ["oidc"]}],
}


# --------------------------------------------------------------------------------- hashes
def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$N$r$p$salt$hash`` (salt 16 random bytes, hash 32 bytes, base64)."""
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=128 * 1024 * 1024, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(dk)}"


def _parse(encoded: str) -> tuple[str, tuple, bytes, bytes]:
    parts = encoded.split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = (int(x) for x in parts[1:4])
            if n < 2 ** 10 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16:
                raise ValueError("weak or invalid scrypt parameters")
            return "scrypt", (n, r, p), base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
        if parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            it = int(parts[1])
            if it < 100_000:
                raise ValueError("fewer than 100000 PBKDF2 iterations")
            return "pbkdf2_sha256", (it,), base64.b64decode(parts[2], validate=True), base64.b64decode(parts[3], validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc) if "iterations" in str(exc) or "scrypt" in str(exc) else "bad base64 or number") from None
    raise ValueError("not scrypt$N$r$p$salt$hash or pbkdf2_sha256$iterations$salt$hash "
                     "(make one with `seekwatch dashboard hash-password`)")


def verify_password(password: str, encoded: str) -> bool:
    """Recompute and compare in constant time. A malformed hash never matches."""
    try:
        kind, params, salt, want = _parse(encoded)
    except ValueError:
        return False
    pw = password.encode("utf-8")
    if kind == "scrypt":
        n, r, p = params
        got = hashlib.scrypt(pw, salt=salt, n=n, r=r, p=p, maxmem=128 * 1024 * 1024, dklen=len(want))
    else:
        got = hashlib.pbkdf2_hmac("sha256", pw, salt, params[0], dklen=len(want))
    return hmac.compare_digest(got, want)


# --------------------------------------------------------------------------------- config
@dataclass
class AuthConfig:
    users: dict[str, str] = field(default_factory=dict)
    oidc: dict[str, Any] | None = None
    source: str = ""

    @property
    def mode(self) -> str:
        return "oidc" if self.oidc is not None else "password"


def load_config(path: str | os.PathLike[str]) -> AuthConfig:
    """Read and check the auth config; :class:`contracts.config.ConfigError` (one line) if bad."""
    from contracts.config import ConfigError, load_yaml_config

    data = load_yaml_config(path, SCHEMA)
    users = data.get("users") or {}
    for name, h in users.items():
        try:
            _parse(h)
        except ValueError as exc:
            raise ConfigError(f"{path}: users.{name}: {exc}") from None
    oidc = data.get("oidc", None) if "oidc" in data else None
    if "oidc" in data and oidc is None:
        oidc = {}
    return AuthConfig(users=dict(users), oidc=oidc, source=str(path))


# --------------------------------------------------------------------------------- CLI hooks
def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--auth-config", metavar="FILE",
                   help="login config (YAML: users with password hashes, or oidc); see docs/reliability.md (Dashboard login). "
                        "Make a hash with `seekwatch dashboard hash-password`")
    g.add_argument("--insecure-no-auth", action="store_true",
                   help="run WITHOUT a login (local demo only): anyone who reaches the port sees conversations")


def env_for(args: argparse.Namespace) -> dict[str, str]:
    if getattr(args, "auth_config", None):
        return {ENV_CONFIG: os.path.abspath(args.auth_config)}
    if getattr(args, "insecure_no_auth", False):
        return {ENV_INSECURE: "1"}
    return {}


def wants_hash_password(args: argparse.Namespace) -> bool:
    return [a for a in (getattr(args, "streamlit_args", None) or []) if a != "--"][:1] == ["hash-password"]


def check_args(args: argparse.Namespace) -> None:
    """Before starting the server: a login is configured (and valid), or waived out loud."""
    from contracts.config import ConfigError

    if getattr(args, "auth_config", None):
        load_config(args.auth_config)
        return
    if getattr(args, "insecure_no_auth", False):
        print(INSECURE_BANNER, file=sys.stderr, flush=True)
        return
    raise ConfigError("the dashboard shows conversations and needs a login: give --auth-config FILE "
                      "(hash a password with `seekwatch dashboard hash-password`) or say --insecure-no-auth")


def hash_password_cli(stdin=None, stdout=None, stderr=None) -> int:
    """``seekwatch dashboard hash-password``: print a scrypt hash for the config file."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    if stdin.isatty():
        pw = getpass.getpass("password: ")
        if pw != getpass.getpass("again: "):
            print("seekwatch dashboard: error: the passwords differ", file=stderr)
            return 2
    else:
        pw = stdin.readline().rstrip("\r\n")
    if len(pw) < MIN_PASSWORD_LEN:
        print(f"seekwatch dashboard: error: use a password of at least {MIN_PASSWORD_LEN} characters", file=stderr)
        return 2
    print(hash_password(pw), file=stdout)
    return 0


# --------------------------------------------------------------------------------- the gate
def _warn_insecure_once_per_session(st) -> None:
    if not st.session_state.get("_seekwatch_insecure_logged"):
        st.session_state["_seekwatch_insecure_logged"] = True
        log.warning(INSECURE_BANNER)
        print(INSECURE_BANNER, file=sys.stderr, flush=True)


def _password_form(st, cfg: AuthConfig) -> bool:
    st.title("seekwatch · 登录 Login")
    st.caption("此看板显示用户对话（已脱敏）/ This dashboard shows users' (masked) conversations.")
    with st.form("seekwatch-login"):
        user = st.text_input("用户名 User", key="_seekwatch_user_input")
        pw = st.text_input("密码 Password", type="password", key="_seekwatch_pw_input")
        submitted = st.form_submit_button("登录 Log in")
    if submitted:
        want = cfg.users.get(user)
        # verify against a dummy hash for unknown users, so timing does not reveal names
        ok = verify_password(pw, want if want else _dummy_hash()) and want is not None
        if ok:
            st.session_state[SESSION_KEY] = {"user": user, "at": time.time()}
            log.info("dashboard login: %s", user)
            st.rerun()
        log.warning("dashboard login failed for user %r", user)
        time.sleep(FAIL_DELAY_S)
        st.error("用户名或密码错误 / Wrong user name or password.")
    return False


def _oidc(st, cfg: AuthConfig) -> bool:
    user = st.user
    if not getattr(user, "is_logged_in", False):
        st.title("seekwatch · 登录 Login")
        st.caption("此看板显示用户对话（已脱敏）/ This dashboard shows users' (masked) conversations.")
        provider = (cfg.oidc or {}).get("provider")
        st.button("单点登录 Log in with SSO", on_click=(lambda: st.login(provider) if provider else st.login()))
        return False
    email = str(user.get("email") or "")
    emails = [e.lower() for e in (cfg.oidc or {}).get("allowed_emails", [])]
    domains = [d.lower().lstrip("@") for d in (cfg.oidc or {}).get("allowed_domains", [])]
    if (emails or domains) and not (email.lower() in emails or email.lower().rpartition("@")[2] in domains):
        log.warning("dashboard OIDC login refused for %r", email)
        st.error(f"{email or 'this account'} is not allowed on this dashboard.")
        st.button("退出 Log out", on_click=st.logout)
        return False
    with st.sidebar:
        st.caption(f"登录 {email}")
        st.button("退出 Log out", on_click=st.logout, key="_seekwatch_logout")
    return True


def gate() -> bool:
    """Call at the top of the app, after ``st.set_page_config``: True when the page may render.
    When False the caller must ``st.stop()`` (nothing else is shown)."""
    import streamlit as st

    if os.environ.get(ENV_INSECURE) == "1" and not os.environ.get(ENV_CONFIG):
        _warn_insecure_once_per_session(st)
        st.sidebar.warning("无登录 No login (--insecure-no-auth)", icon=":material/lock_open:")
        return True
    path = os.environ.get(ENV_CONFIG)
    if not path:
        st.error("登录未配置 / No login configured: start it with `seekwatch dashboard --auth-config FILE` "
                 "(or --insecure-no-auth for a local demo).")
        return False
    try:
        cfg = _cached_config(path, _mtime(path))
    except Exception as exc:  # noqa: BLE001 - a broken file must lock, not open, the dashboard
        log.error("dashboard auth config: %s", exc)
        st.error(f"登录配置错误 / Login config error: {exc}")
        return False
    if cfg.mode == "oidc":
        return _oidc(st, cfg)
    who = st.session_state.get(SESSION_KEY)
    if who and who.get("user") in cfg.users:
        with st.sidebar:
            st.caption(f"登录 {who['user']}")
            if st.button("退出 Log out", key="_seekwatch_logout"):
                st.session_state.pop(SESSION_KEY, None)
                st.rerun()
        return True
    return _password_form(st, cfg)


def _mtime(path: str) -> float:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return -1.0


_CACHE: dict[tuple[str, float], AuthConfig] = {}


def _cached_config(path: str, mtime: float) -> AuthConfig:
    key = (path, mtime)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_config(path)
    return _CACHE[key]


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    """A valid hash of a random password: unknown user names cost as much as known ones."""
    if not _DUMMY:
        _DUMMY.append(hash_password(secrets.token_hex(16)))
    return _DUMMY[0]


if __name__ == "__main__":  # python -m dashboards.auth  → the same as `seekwatch dashboard hash-password`
    sys.exit(hash_password_cli())
