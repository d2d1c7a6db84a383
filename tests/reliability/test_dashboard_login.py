"""Dashboard login (dashboards/auth.py): required by default, a scrypt password hash in a
config file or Streamlit's OIDC login, ``--insecure-no-auth`` only when said and then loudly.

The app entry point runs under Streamlit's AppTest on schema-valid fixture logs: without
credentials no page content (no KPI, no conversation) is rendered; with the right password it
is. The CLI side runs the real ``python -m seekwatch dashboard``.
"""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from contracts.supervisor import ProcessSpec, start
from dashboards import auth
from tests.dashboard.gen import generate, write_logs
from tests.fixtures.ports import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "dashboards" / "app.py"
END = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)
PASSWORD = "correct horse battery staple"
KPI = "请求数 Requests"


def seekwatch(*argv: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEEKWATCH_DASHBOARD_")}
    return subprocess.run([sys.executable, "-m", "seekwatch", *argv], cwd=ROOT, capture_output=True, text=True,
                          input=input, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("logs")
    write_logs(d, list(generate(200, END, span_s=6 * 3600, seed=3)), per_file=100)
    return d


@pytest.fixture(scope="module")
def password_hash() -> str:
    """Made by the real helper: ``seekwatch dashboard hash-password`` (password on stdin)."""
    r = seekwatch("dashboard", "hash-password", input=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    h = r.stdout.strip()
    assert h.startswith("scrypt$") and PASSWORD not in h
    return h


@pytest.fixture
def env(monkeypatch, logs, tmp_path):
    for k in [k for k in os.environ if k.startswith("SEEKWATCH_DASHBOARD_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("SEEKWATCH_DASHBOARD_LOGS", str(logs))
    monkeypatch.setenv("SEEKWATCH_DASHBOARD_NOW", END.isoformat())
    monkeypatch.setenv("SEEKWATCH_DASHBOARD_CACHE", "off")
    return monkeypatch


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def shows_content(at: AppTest) -> bool:
    return any(m.label == KPI for m in at.metric) or len(at.metric) > 0 or len(at.dataframe) > 0


# ------------------------------------------------------------------------------- hashes
def test_hash_roundtrip_and_constant_time_compare():
    h = auth.hash_password("s3cret-pass")
    assert auth.verify_password("s3cret-pass", h)
    assert not auth.verify_password("s3cret-pasS", h)
    assert not auth.verify_password("s3cret-pass", "plaintext")   # a malformed hash never matches
    import base64
    import hashlib
    salt = b"0123456789abcdef"
    pb = "pbkdf2_sha256$200000$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(
        hashlib.pbkdf2_hmac("sha256", b"pw-of-pbkdf2", salt, 200000)).decode()
    assert auth.verify_password("pw-of-pbkdf2", pb) and not auth.verify_password("other", pb)


# ------------------------------------------------------------------------------- the gate
def test_no_login_configured_shows_nothing(env):
    at = app()
    assert not shows_content(at)
    assert any("No login configured" in e.value for e in at.error)


def test_password_login_required_then_content(env, tmp_path, password_hash):
    cfg = write_config(tmp_path / "auth.yaml", {"users": {"ops": password_hash}})
    env.setenv(auth.ENV_CONFIG, str(cfg))
    at = app()
    assert not shows_content(at)                                # login form only
    assert at.text_input(key="_seekwatch_pw_input") is not None
    sessions_text = " ".join(str(getattr(e, "value", "")) for e in at.markdown)
    assert "会话 Sessions" not in sessions_text

    at.text_input(key="_seekwatch_user_input").input("ops")
    at.text_input(key="_seekwatch_pw_input").input("wrong password")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert not shows_content(at)
    assert any("Wrong user name or password" in e.value for e in at.error)

    at.text_input(key="_seekwatch_user_input").input("nobody")     # unknown user, right password
    at.text_input(key="_seekwatch_pw_input").input(PASSWORD)
    at.button[0].click().run()
    assert not shows_content(at)

    at.text_input(key="_seekwatch_user_input").input("ops")
    at.text_input(key="_seekwatch_pw_input").input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert shows_content(at) and any(m.label == KPI for m in at.metric)
    assert any("ops" in c.value for c in at.sidebar.caption)

    at.switch_page("views/sessions.py").run()                    # still logged in on another page
    assert not at.exception, at.exception
    assert not any("Log in" in b.label for b in at.button)

    at.sidebar.button(key="_seekwatch_logout").click().run()     # log out: content gone again
    assert not shows_content(at)


def test_broken_or_removed_config_locks_the_dashboard(env, tmp_path, password_hash):
    cfg = write_config(tmp_path / "auth.yaml", {"users": {"ops": "not-a-hash"}})
    env.setenv(auth.ENV_CONFIG, str(cfg))
    at = app()
    assert not shows_content(at) and any("Login config error" in e.value for e in at.error)
    cfg.unlink()
    at = app()
    assert not shows_content(at)


def test_oidc_configured_shows_only_the_login_button(env, tmp_path):
    cfg = write_config(tmp_path / "auth.yaml", {"oidc": {"provider": None, "allowed_domains": ["example.com"]}})
    env.setenv(auth.ENV_CONFIG, str(cfg))
    at = app()
    assert not shows_content(at)
    assert [b.label for b in at.button] == ["单点登录 Log in with SSO"]


def test_insecure_no_auth_shows_content_and_says_so(env):
    env.setenv(auth.ENV_INSECURE, "1")
    at = app()
    assert shows_content(at)
    assert any("--insecure-no-auth" in w.value for w in at.sidebar.warning)


# ------------------------------------------------------------------------------- the CLI
def test_cli_refuses_to_start_without_a_login(logs):
    r = seekwatch("dashboard", "--logs", str(logs), "--port", str(free_port()))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--insecure-no-auth" in r.stderr and "--auth-config" in r.stderr


def test_cli_hash_password_refuses_a_short_password():
    r = seekwatch("dashboard", "hash-password", input="short\n")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def _serve(argv: list[str], tmp_path: Path):
    port = free_port()
    out = tmp_path / f"dash-{port}.log"
    proc = start(ProcessSpec(name="dashboard", argv=[sys.executable, "-m", "seekwatch", "dashboard", "--port", str(port),
                                                     *argv],
                             cwd=ROOT, output=out, unset_env=[k for k in os.environ if k.startswith("SEEKWATCH_DASHBOARD_")]))
    return proc, port, out




def test_cli_insecure_no_auth_is_logged_loudly_and_auth_config_starts(logs, tmp_path, password_hash):
    proc, port, out = _serve(["--logs", str(logs), "--insecure-no-auth", "--cache-dir", "off"], tmp_path)
    try:
        wait_for_port(port, timeout=60)
        text = out.read_text(errors="replace")
        assert "WARNING" in text and "NO LOGIN" in text and "--insecure-no-auth" in text
    finally:
        proc.stop()
    cfg = write_config(tmp_path / "auth.yaml", {"users": {"ops": password_hash}})
    proc, port, out = _serve(["--logs", str(logs), "--auth-config", str(cfg), "--cache-dir", "off"], tmp_path)
    try:
        wait_for_port(port, timeout=60)
        assert "NO LOGIN" not in out.read_text(errors="replace")
        assert proc.poll() is None
    finally:
        proc.stop()
