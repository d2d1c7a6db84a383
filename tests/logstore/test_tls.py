"""TLS and credentials of the log-store client (es-setup, ship, the dashboard): certificates are verified by default,
a CA bundle makes a private CA trusted, --insecure exists, basic auth comes from flags/env.
Served by the recording fake over HTTPS with a throwaway CA made by openssl."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.fixtures.tools import require_tool
from tests.logstore.fake_engine import FakeEngine

@pytest.fixture(autouse=True)
def _openssl():
    require_tool("openssl")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=seekwatch test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return d


def es_setup(*args, env=None):
    return subprocess.run([sys.executable, "-m", "seekwatch", "es-setup", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_certificates_are_verified_by_default(pki):
    with FakeEngine(tls=(str(pki / "server.pem"), str(pki / "server.key"))) as fake:
        assert fake.url.startswith("https://")
        proc = es_setup("--url", fake.url)
        assert proc.returncode == 1
        assert len(proc.stderr.strip().splitlines()) == 1 and "CERTIFICATE_VERIFY_FAILED" in proc.stderr
        assert fake.requests == []  # nothing was sent over the untrusted connection


def test_ca_bundle_makes_a_private_ca_trusted(pki):
    with FakeEngine(tls=(str(pki / "server.pem"), str(pki / "server.key"))) as fake:
        proc = es_setup("--url", fake.url, "--ca-certs", str(pki / "ca.pem"))
        assert proc.returncode == 0, proc.stderr
        assert ("PUT", "/_ilm/policy/seekwatch-retention") in fake.writes()


def test_insecure_flag_skips_verification(pki):
    with FakeEngine(tls=(str(pki / "server.pem"), str(pki / "server.key"))) as fake:
        assert es_setup("--url", fake.url, "--insecure").returncode == 0


def test_basic_auth_from_flag_and_environment(pki):
    with FakeEngine(tls=(str(pki / "server.pem"), str(pki / "server.key")), basic_auth=("ops", "s3cret")) as fake:
        denied = es_setup("--url", fake.url, "--ca-certs", str(pki / "ca.pem"))
        assert denied.returncode == 1 and "401" in denied.stderr
        allowed = es_setup("--url", fake.url, "--ca-certs", str(pki / "ca.pem"), "--username", "ops",
                           env={"SEEKWATCH_ES_PASSWORD": "s3cret"})
        assert allowed.returncode == 0, allowed.stderr


def _last_hour():
    import datetime as dt

    from dashboards.data.base import Window

    end = dt.datetime.now(dt.timezone.utc)
    return Window(end - dt.timedelta(hours=1), end)


def test_dashboard_source_takes_the_same_tls_and_auth(pki):
    """The dashboard's log-store source goes through the same store client as es-setup: a
    private CA is trusted only with the CA bundle, and basic auth is sent."""
    from contracts.logstore import StoreClient
    from dashboards.data.logstore import LogStoreSource, DashboardSourceError

    tls = (str(pki / "server.pem"), str(pki / "server.key"))
    with FakeEngine(tls=tls, basic_auth=("ops", "s3cret")) as fake:
        untrusted = LogStoreSource(fake.url)
        with pytest.raises(DashboardSourceError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusted.kpis(_last_hour())
        assert fake.requests == []
        client = StoreClient(fake.url, ca_certs=str(pki / "ca.pem"), username="ops", password="s3cret")
        with pytest.raises(DashboardSourceError, match="HTTP 400"):  # the fake has no _search: it got there
            LogStoreSource(client).kpis(_last_hour())
        assert [(m, p) for m, p, _q, _b in fake.requests] == [("POST", "/seekwatch-*/_search")]


def test_dashboard_cli_takes_the_store_flags(pki, tmp_path):
    from seekwatch.cli import build_parser

    from dashboards.cli import build_env

    argv = ["dashboard", "--url", "https://127.0.0.1:9200", "--ca-certs", str(pki / "ca.pem"),
            "--username", "ops", "--insecure-no-auth"]
    args = build_parser(argv).parse_args(argv)
    env = build_env(args, base={})
    assert env["SEEKWATCH_DASHBOARD_CA_CERTS"] == str(pki / "ca.pem")
    assert env["SEEKWATCH_ES_USERNAME"] == "ops"
    proc = subprocess.run([sys.executable, "-m", "seekwatch", "dashboard", "--logs", str(tmp_path), "--ca-certs",
                           str(pki / "ca.pem"), "--insecure-no-auth"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith("go with --url")
