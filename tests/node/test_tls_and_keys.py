"""TLS 1.3 only, key rotation without a restart, and keys on the probes when asked."""
from __future__ import annotations

import shutil
import signal
import ssl
import subprocess
import time

import httpx
import pytest

OK_BODY = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def _handshake(port: int, flag: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", flag, "-brief"],
                          input="", capture_output=True, text=True, timeout=20)


def test_tls_13_only(node_factory, cert):
    assert shutil.which("openssl"), "openssl missing: scripts/setup.d/20-debian.sh installs it"
    n = node_factory("--tls-cert", str(cert[0]), "--tls-key", str(cert[1]), ready_scheme="https", ready_verify=str(cert[0]))
    ok = _handshake(n.port, "-tls1_3")
    assert ok.returncode == 0 and "TLSv1.3" in ok.stdout + ok.stderr
    refused = _handshake(n.port, "-tls1_2")
    assert refused.returncode != 0
    ctx = ssl.create_default_context(cafile=str(cert[0]))  # clients verify the certificate
    r = httpx.post(f"https://127.0.0.1:{n.port}/v1/chat/completions", json=OK_BODY, verify=ctx, timeout=30)
    assert r.status_code == 200
    with pytest.raises(httpx.ConnectError):  # and an unverified certificate is refused by default
        httpx.get(f"https://127.0.0.1:{n.port}/healthz", timeout=10)


def test_keys_rotate_without_restart(node_factory, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-old\n")
    n = node_factory("--api-key-file", str(keys))

    def status(key):
        return httpx.post(n.base_url + "/v1/chat/completions", json=OK_BODY, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}).status_code

    assert (status("sk-old"), status("sk-new")) == (200, 401)
    keys.write_text("sk-new\n")
    deadline = time.monotonic() + 10  # the node polls the file's modification time
    while status("sk-new") != 200 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert (status("sk-old"), status("sk-new")) == (401, 200)
    keys.write_text("sk-third\n")
    n.proc.send_signal(signal.SIGHUP)  # or at once, on SIGHUP
    deadline = time.monotonic() + 5
    while status("sk-third") != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status("sk-third") == 200
    keys.write_text("")  # an emptied file keeps the old keys rather than opening the node
    n.proc.send_signal(signal.SIGHUP)
    time.sleep(1)
    assert (status("sk-third"), status("anything")) == (200, 401)


def test_probes_need_a_key_only_when_asked(node_factory, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-k\n")
    n = node_factory("--api-key-file", str(keys), "--auth-probes", ready_headers={"Authorization": "Bearer sk-k"})
    assert httpx.get(n.base_url + "/metrics", timeout=10).status_code == 401
    assert httpx.get(n.base_url + "/metrics", headers={"Authorization": "Bearer sk-k"}, timeout=10).status_code == 200


def test_upstream_over_tls_verifies_the_certificate(node_factory, cert):
    """A node in front of an https upstream trusts it only through --upstream-ca-bundle;
    with the system's CAs the self-signed upstream is refused (502), never accepted."""
    upstream = node_factory("--tls-cert", str(cert[0]), "--tls-key", str(cert[1]),
                            ready_scheme="https", ready_verify=str(cert[0]))
    url = f"https://127.0.0.1:{upstream.port}/v1"
    trusting = node_factory("--engine", "upstream", "--upstream-url", url, "--upstream-ca-bundle", str(cert[0]),
                            "--served-model-name", "deepseek-chat", with_model=False)
    default = node_factory("--engine", "upstream", "--upstream-url", url,
                           "--served-model-name", "deepseek-chat", with_model=False)
    assert httpx.post(trusting.base_url + "/v1/chat/completions", json=OK_BODY, timeout=60).status_code == 200
    r = httpx.post(default.base_url + "/v1/chat/completions", json=OK_BODY, timeout=60)
    assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]


def test_keep_alive_closes_idle_connections_after_the_time_asked(node_factory):
    """``--keep-alive 1s`` closes a client connection idle for 2 s; with the default (5 s)
    the same connection still answers a second request after 2 s. Raw sockets, so nothing
    on the client side reconnects behind the test's back."""
    import http.client
    import socket

    from tests.fixtures.ports import free_port

    def idle_then_ask(node) -> bytes:
        """The second response's status line, or b"" if the node closed the connection."""
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
            ask = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\n\r\n".encode()

            def answer() -> bytes:  # one whole response (head and body), as the standard library reads it
                r = http.client.HTTPResponse(s)
                r.begin()
                r.read()
                return f"HTTP/{r.version // 10}.{r.version % 10} {r.status} ".encode()

            s.sendall(ask)
            assert answer().startswith(b"HTTP/1.1 ")
            time.sleep(2.0)
            try:
                s.sendall(ask)
                return answer()
            except ConnectionError:  # http.client.RemoteDisconnected is one
                return b""

    upstream = f"http://127.0.0.1:{free_port()}/v1"  # nothing there: /healthz answers anyway
    short = node_factory("--engine", "upstream", "--upstream-url", upstream, "--keep-alive", "1s", with_model=False)
    default = node_factory("--engine", "upstream", "--upstream-url", upstream, with_model=False)
    assert idle_then_ask(short) == b""
    assert idle_then_ask(default).startswith(b"HTTP/1.1 ")
