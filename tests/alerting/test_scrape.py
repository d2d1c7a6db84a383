"""Direct scrape: the HTTP client (keep-alive, chunked, close, timeout), the exposition parser,
window arithmetic, and no data as an alert."""
from __future__ import annotations

import asyncio
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import generate_latest

from monitor.alerting.config import load_config
from monitor.alerting.http_scrape import Endpoint, ScrapeError
from monitor.alerting.model import UNKNOWN
from monitor.alerting.scrape import ScrapeSource, parse_exposition
from tests.fixtures.ports import free_port

from .conftest import fast_config


class Server:
    def __init__(self, mode: str, body: bytes):
        outer = self
        self.hits = 0

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                outer.hits += 1
                if mode == "slow":
                    time.sleep(1.5)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                if mode == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(body), 1000):
                        part = body[i:i + 1000]
                        self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                elif mode == "close":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body)
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.port = free_port()
        self.srv = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.srv.daemon_threads = True
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}/metrics"

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.mark.parametrize("mode", ["length", "chunked", "close", "slow"])
def test_http_client_modes(mode, metrics_node):
    node = metrics_node()
    node.turn(0.3, n=3)
    body = generate_latest(node.registry)
    srv = Server(mode, body)
    ep = Endpoint(srv.url)
    loop = asyncio.new_event_loop()
    try:
        for _ in range(3):
            if mode == "slow":
                with pytest.raises(ScrapeError, match="timed out"):
                    loop.run_until_complete(ep.get(0.3))
                break
            status, got = loop.run_until_complete(ep.get(5))
            assert status == 200 and got == body
    finally:
        ep.close()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        srv.stop()


def test_connection_refused_is_a_scrape_error():
    ep = Endpoint(f"http://127.0.0.1:{free_port()}/metrics")
    loop = asyncio.new_event_loop()
    with pytest.raises(ScrapeError):
        loop.run_until_complete(ep.get(2))
    loop.close()


def test_parser_reads_the_real_node_exposition():
    """The node's own NodeMetrics exposition, parsed by the filtered prometheus_client parse."""
    from prometheus_client import CollectorRegistry

    from inference.metrics import NodeMetrics

    reg = CollectorRegistry()
    nm = NodeMetrics(reg)
    for ttft in (0.1, 0.2, 0.9):
        nm.observe_turn("completed", ttft * 2, ttft, 0.01, 0.0, 10, 10)
    nm.observe_turn("error", 1.0, None, None, None, 10, 0)
    nm.observe_feedback("down")                   # any thumbs-down: not turn completion's input
    nm.observe_completed_turn_rated_down()         # one on a completed turn: is
    nm.observe_conversation_ended("completed")
    nm.observe_conversation_ended("incomplete")
    nm.set_queue_depth(3, 1)
    s = parse_exposition(generate_latest(reg).decode(), "seekwatch_time_to_first_token_seconds", 0.0)
    assert s.requests["completed"] == 3 and s.requests["error"] == 1 and s.requests["aborted"] == 0
    assert s.down == 1 and s.running == 3 and s.conversations == {"completed": 1, "incomplete": 1}
    assert s.buckets[math.inf] == 3 and s.buckets[0.5] == 2


def test_parser_without_seekwatch_series_is_none():
    assert parse_exposition("# HELP up x\nup 1\nprocess_cpu_seconds_total 3\n", "seekwatch_x", 0) is None


def test_unreachable_node_and_foreign_exposition_are_down(tmp_path, metrics_node):
    node = metrics_node()
    foreign = Server("length", b"# TYPE other_metric gauge\nother_metric 1\n")
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    cfg = load_config(fast_config(tmp_path, nodes=[node.url, foreign.url, dead]))
    src = ScrapeSource(cfg)
    try:
        obs = {o.node: o for o in src.collect()}
    finally:
        src.close()
        foreign.stop()
    assert obs[node.target].up
    assert not obs[f"127.0.0.1:{foreign.port}"].up and "no seekwatch_ series" in obs[f"127.0.0.1:{foreign.port}"].error
    dead_obs = obs[dead.split("/")[2]]
    assert not dead_obs.up and "cannot scrape" in dead_obs.error


def test_window_quantile_uses_bucket_deltas_only(tmp_path, metrics_node):
    """Old slow turns before the window do not count; the quantile is over the window's increase."""
    node = metrics_node()
    node.turn(5.0, n=100)                      # long ago (before the first scrape)
    cfg = load_config(fast_config(tmp_path, nodes=[node.url]))
    src = ScrapeSource(cfg)
    try:
        t0 = time.time()
        src.collect(t0)
        node.turn(0.2, n=50)
        (o,) = src.collect(t0 + 1)
        assert 0.15 < o.latency <= 0.2         # (0.15, 0.2] bucket, despite the 5 s history
        assert o.completion.total == 50 and o.completion.rate == 1.0
        (o,) = src.collect(t0 + 2)
        assert 0.15 < o.latency <= 0.2         # still in the 8 s window
        (o,) = src.collect(t0 + 20)            # one scrape in the window: not enough to judge
        assert o.latency is UNKNOWN
        src.collect(t0 + 25)
        (o,) = src.collect(t0 + 27)            # window holds only unchanged scrapes: no turns, nothing slow
        assert o.latency is None and o.completion.total == 0
    finally:
        src.close()


def test_fast_path_agrees_with_prometheus_client_parser(metrics_node):
    node = metrics_node(gpus=2, running=3)
    node.turn(0.3, n=7)
    node.turn(2.0, "error", n=2)
    node.feedback.labels("down").inc(3)
    node.gpu_util.labels("1").set(0.97)
    text = generate_latest(node.registry).decode()
    fast = parse_exposition(text, "seekwatch_time_to_first_token_seconds", 1.0)
    ref = parse_exposition(text, "seekwatch_time_to_first_token_seconds", 1.0, reference=True)
    assert fast == ref and fast.requests["error"] == 2 and fast.gpu == {"0": 0.0, "1": 0.97}
    # unusual but valid lines (escapes, timestamps, exponents) go through prometheus_client
    odd = ('seekwatch_requests_total{status="completed",note="a\\"b"} 1.5e1 1700000000000\n'
           'seekwatch_requests_running 2\n')
    s = parse_exposition(odd, "seekwatch_time_to_first_token_seconds", 0.0)
    assert s.requests == {"completed": 15.0} and s.running == 2


def test_counter_reset_in_the_window_is_counted_like_prometheus(tmp_path):
    """A node restart resets its counters: 100 -> 5 -> 10 is an increase of 5 + 5 turns."""
    from monitor.alerting.scrape import Sample, observe_static

    cfg = load_config(fast_config(tmp_path, nodes=["http://n:1/metrics"]))
    inf = math.inf

    def smp(t, completed, errors, b05, total):
        return ("http://n:1/metrics", Sample(t, {0.5: b05, inf: total}, {"completed": completed, "error": errors},
                                             0.0, {}, 1.0))
    (o,) = observe_static(cfg, [smp(0, 90, 10, 100, 100), smp(1, 5, 0, 0, 5), smp(2, 8, 2, 0, 10)], now=2)
    assert o.completion.total == 10 and o.completion.completed == 8
    assert o.latency == 0.5                    # all 10 windowed turns > 0.5 s: +Inf bucket -> highest bound


def test_https_node_with_ca_file_and_headers(tmp_path, metrics_node, monkeypatch):
    import ssl
    import subprocess

    from tests.fixtures.tools import require_tool

    require_tool("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    node = metrics_node()
    body = generate_latest(node.registry)
    seen = []

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    port = free_port()
    srv = ThreadingHTTPServer(("127.0.0.1", port), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{port}/metrics"
    monkeypatch.setenv("NODE_KEY", "sk-1")
    try:
        untrusted = load_config(fast_config(tmp_path, nodes=[url]))
        src = ScrapeSource(untrusted)
        (o,) = src.collect()
        src.close()
        assert not o.up and "CERTIFICATE_VERIFY_FAILED" in o.error
        trusted = load_config(fast_config(tmp_path, nodes=[url], scrape_tls={"ca_file": str(cert)},
                                          scrape_headers={"Authorization": "Bearer ${NODE_KEY}"}))
        src = ScrapeSource(trusted)
        (o,) = src.collect()
        src.close()
        assert o.up, o.error
        assert seen[-1] == "Bearer sk-1"
    finally:
        srv.shutdown()
        srv.server_close()


def test_unset_header_variable_is_a_config_error(tmp_path, monkeypatch):
    from contracts.config import ConfigError

    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match="scrape_headers.Authorization: environment variable NOPE_NOT_SET is not set"):
        load_config(fast_config(tmp_path, nodes=["http://a:1/metrics"],
                                scrape_headers={"Authorization": "Bearer ${NOPE_NOT_SET}"}))


def test_turn_completion_reads_chat_series_and_series_without_a_kind():
    """NextChat's title/summary requests are not turns of the dialogue; a node older than request
    kinds exposes no ``request_kind`` label, and its turns were chat turns."""
    text = ('seekwatch_requests_total{status="completed",request_kind="chat"} 7\n'
            'seekwatch_requests_total{status="completed",request_kind="title"} 5\n'
            'seekwatch_requests_total{status="error",request_kind="summary"} 2\n'
            'seekwatch_requests_total{status="error"} 1\n')
    s = parse_exposition(text, "seekwatch_time_to_first_token_seconds", 0.0)
    assert s.requests == {"completed": 7.0, "error": 1.0}
