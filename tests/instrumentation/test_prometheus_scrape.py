"""A real Prometheus server (Debian package, loopback port) scrapes a registry carrying
NodeMetrics and the GPU collector: histogram_quantile(0.99) over the TTFT histogram lands
in the same bucket as the P99 computed from the raw observations, the no-GPU path reads
gpu_available 0 with no gpu_* series, and no series carries a session/user label or PII."""
from __future__ import annotations


import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server

from contracts import metrics as m
from inference.gpu import GpuCollector
from inference.metrics import ALLOWED_LABELS, NodeMetrics
from inference.session_record import build_session_record
from tests.fixtures.ports import free_port
from tests.instrumentation.pii_corpus import CASES, RAW_PII

@pytest.fixture(autouse=True)
def _prometheus():
    from tests.fixtures.tools import require_tool

    require_tool("prometheus", also="/usr/bin/prometheus")


def bucket_of(value: float) -> tuple[float, float]:
    edges = (0.0,) + m.LATENCY_BUCKETS + (float("inf"),)
    for lo, hi in zip(edges, edges[1:]):
        if lo < value <= hi:
            return lo, hi
    raise AssertionError(value)


def test_real_prometheus_p99_within_one_bucket_and_clean_labels(prometheus_server):
    reg = CollectorRegistry()
    nm = NodeMetrics(reg)
    gpu = GpuCollector(interval_s=0.2).start()
    reg.register(gpu)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=reg)
    try:
        rng = np.random.default_rng(7)
        ttft = rng.lognormal(mean=np.log(0.18), sigma=0.45, size=3000)   # P99 near 0.5 s
        for i, t in enumerate(ttft):
            status = "completed" if i % 10 else "refused"
            nm.observe_turn(status, float(t) * 3, float(t), 0.02, 0.001, 50, 120)
        for text, _, _ in CASES:  # PII passes through the record builder into the counters
            rec = build_session_record(
                session_id="someone@example.com", request_id="chatcmpl-x", turn_index=0,
                prompt=text, response=text, model_version="m", duration_s=0.1, ttft_s=0.01,
                status="completed", input_tokens=1, output_tokens=1)
            nm.observe_redactions(rec["pii"]["redactions"])

        prom = prometheus_server([f"127.0.0.1:{port}"], scrape_interval="1s")
        prom.wait_for_series(f"{m.TIME_TO_FIRST_TOKEN}_count == {len(ttft)}", timeout=60)

        got = float(prom.query(
            f"histogram_quantile(0.99, sum by (le) ({m.TIME_TO_FIRST_TOKEN}_bucket))")[0]["value"][1])
        want = float(np.percentile(ttft, 99))
        assert bucket_of(got) == bucket_of(want), (got, want)

        assert float(prom.query(m.GPU_AVAILABLE)[0]["value"][1]) == 0.0
        assert prom.query(f'{{__name__=~"seekwatch_gpu_.+", __name__!="{m.GPU_AVAILABLE}"}}') == []

        labels = set()
        for series in prom.query('{__name__=~"seekwatch_.+"}'):
            labels |= set(series["metric"]) - {"__name__", "job", "instance"}
        assert labels <= ALLOWED_LABELS, labels
        refused = float(prom.query(f'sum({m.REQUESTS_TOTAL}{{status="refused"}})')[0]["value"][1])
        assert refused == len(ttft) // 10

        exposition = generate_latest(reg).decode()
        for raw in RAW_PII + ["someone@example.com"]:
            assert raw not in exposition
    finally:
        server.shutdown()
        server.server_close()
        gpu.stop()
