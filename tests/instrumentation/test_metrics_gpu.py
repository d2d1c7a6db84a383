"""NodeMetrics exposition (real promtool, no session/user labels) and the NVML GPU
collector: the no-GPU path for real, the GPU path only through a fake NVML module."""
from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from contracts import metrics as m
from inference.gpu import GpuCollector
from inference.metrics import ALLOWED_LABELS, NodeMetrics
from inference.session_record import build_session_record
from tests.instrumentation.fake_nvml import FakeDevice, FakeNvml, NVMLError_LibraryNotFound
from tests.instrumentation.pii_corpus import CASES, RAW_PII

PROMTOOL = shutil.which("promtool")


def promtool_check(exposition: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, "check", "metrics"], input=exposition,
                          capture_output=True, timeout=30)


def _busy_registry() -> tuple[CollectorRegistry, NodeMetrics]:
    reg = CollectorRegistry()
    nm = NodeMetrics(reg)
    for i, status in enumerate(m.STATUSES * 3):
        nm.observe_turn(status, 0.1 * i, 0.05 * i if status != "error" else None, 0.01, 0.001 * i, 20, 40)
    nm.observe_feedback("up")
    nm.observe_feedback("down")
    for text, _, _ in CASES:
        r = build_session_record(session_id="user@example.com", request_id="chatcmpl-1", turn_index=0,
                                 prompt=text, response=text, model_version="m", duration_s=0.1,
                                 ttft_s=0.01, status="completed", input_tokens=1, output_tokens=1)
        nm.observe_redactions(r["pii"]["redactions"])
    nm.set_queue_depth(3, 7)
    nm.observe_log_written(5)
    return reg, nm


def test_exposition_passes_real_promtool():
    from tests.fixtures.tools import require_tool

    require_tool("promtool", also="/usr/bin/promtool")
    reg, _ = _busy_registry()
    gpu = GpuCollector(nvml=FakeNvml(devices=[FakeDevice(), FakeDevice(util=97)]))
    gpu.start()
    reg.register(gpu)
    try:
        out = promtool_check(generate_latest(reg))
    finally:
        gpu.stop()
    assert out.returncode == 0, (out.stdout + out.stderr).decode()


def test_every_contract_metric_present_and_preinitialised():
    reg = CollectorRegistry()
    NodeMetrics(reg)
    text = generate_latest(reg).decode()
    for name in (m.REQUEST_DURATION + "_bucket", m.TIME_TO_FIRST_TOKEN + "_count",
                 m.TIME_PER_OUTPUT_TOKEN + "_sum", m.REQUEST_QUEUE + "_count",
                 m.PROMPT_TOKENS_TOTAL, m.GENERATION_TOKENS_TOTAL, m.LOG_RECORDS_TOTAL,
                 m.LOG_DROPPED_TOTAL, m.REQUESTS_RUNNING, m.REQUESTS_WAITING):
        assert re.search(rf"^{name}[ {{]", text, re.M), name
    for s in m.STATUSES:
        for k in m.REQUEST_KINDS:
            assert reg.get_sample_value(m.REQUESTS_TOTAL, {"status": s, "request_kind": k}) == 0.0
    for r in m.FEEDBACK_RATINGS:
        assert reg.get_sample_value(m.FEEDBACK_TOTAL, {"rating": r}) == 0.0
    for k in m.PII_KINDS:
        assert reg.get_sample_value(m.PII_REDACTIONS_TOTAL, {"kind": k}) == 0.0
    assert reg.get_sample_value(m.LOG_DROPPED_TOTAL) == 0.0
    # the contract's buckets
    les = [float(s.labels["le"]) for fam in text_string_to_metric_families(text)
           if fam.name == m.TIME_TO_FIRST_TOKEN for s in fam.samples if s.name.endswith("_bucket")]
    assert les[:-1] == list(m.LATENCY_BUCKETS)


def test_no_session_user_or_pii_in_exposition():
    reg, _ = _busy_registry()
    text = generate_latest(reg).decode()
    labels = set()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels |= set(s.labels)
    assert labels <= ALLOWED_LABELS, labels
    for raw in RAW_PII + ["user@example.com", "chatcmpl-1"]:
        assert raw not in text


def test_observe_turn_semantics():
    reg = CollectorRegistry()
    nm = NodeMetrics(reg)
    nm.observe_turn("rejected", 0.001, None, None, None, 0, 0)
    assert reg.get_sample_value(m.REQUESTS_TOTAL, {"status": "rejected", "request_kind": "chat"}) == 1
    assert reg.get_sample_value(m.REQUEST_DURATION + "_count") == 0  # keeps P99 honest
    nm.observe_turn("completed", 0.42, 0.12, 0.02, 0.003, 10, 25)
    assert reg.get_sample_value(m.TIME_TO_FIRST_TOKEN + "_bucket", {"le": "0.15"}) == 1
    assert reg.get_sample_value(m.TIME_TO_FIRST_TOKEN + "_bucket", {"le": "0.1"}) == 0
    assert reg.get_sample_value(m.PROMPT_TOKENS_TOTAL, {"request_kind": "chat"}) == 10
    assert reg.get_sample_value(m.GENERATION_TOKENS_TOTAL, {"request_kind": "chat"}) == 25
    with pytest.raises(ValueError):
        nm.observe_turn("ok", 1, 1, 1, 1, 1, 1)
    with pytest.raises(ValueError):
        nm.observe_feedback("meh")
    with pytest.raises(ValueError):
        nm.observe_redactions({"passport": 1})


def test_two_registries_do_not_collide():
    NodeMetrics(CollectorRegistry())
    NodeMetrics(CollectorRegistry())


# ------------------------------------------------------------------ GPU: real no-GPU path


def test_no_gpu_real_nvml_gives_available_0_and_no_gpu_series():
    """Real pynvml on this GPU-less machine: NVML init fails, so no gpu_* series and
    seekwatch_gpu_available 0 — never made-up numbers."""
    import pynvml
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("a GPU is present here; this test covers the no-GPU path")
    except pynvml.NVMLError:
        pass
    reg = CollectorRegistry()
    gpu = GpuCollector(interval_s=0.05).start()
    reg.register(gpu)
    try:
        time.sleep(0.15)
        text = generate_latest(reg).decode()
    finally:
        gpu.stop()
    assert reg.get_sample_value(m.GPU_AVAILABLE) == 0.0
    assert "seekwatch_gpu_utilization" not in text and "seekwatch_gpu_memory" not in text
    assert not gpu.available and gpu.latest() is None


# ------------------------------------------------------------------ GPU: fake NVML (mock)


def test_gpu_series_with_fake_nvml_mock():
    """Uses a fake NVML module (mock): two devices, values converted to the contract units."""
    fake = FakeNvml(devices=[FakeDevice(util=37, temp=51, power_mw=412_345),
                             FakeDevice(util=100, mem_used=2**30, mem_total=2**31, temp=80)])
    reg = CollectorRegistry()
    gpu = GpuCollector(nvml=fake).start()
    reg.register(gpu)
    try:
        g = lambda name, i: reg.get_sample_value(name, {"gpu": str(i)})
        assert reg.get_sample_value(m.GPU_AVAILABLE) == 1.0
        assert g(m.GPU_UTILIZATION, 0) == pytest.approx(0.37)
        assert g(m.GPU_UTILIZATION, 1) == 1.0
        assert g(m.GPU_MEMORY_USED, 0) == 10 * 2**30 and g(m.GPU_MEMORY_TOTAL, 1) == 2**31
        assert g(m.GPU_TEMPERATURE, 1) == 80
        assert g(m.GPU_POWER, 0) == pytest.approx(412.345)
    finally:
        gpu.stop()


def test_unsupported_field_is_absent_with_fake_nvml_mock():
    """Fake NVML (mock) where device 1 does not support power: only that series is absent."""
    fake = FakeNvml(devices=[FakeDevice(), FakeDevice(power_mw=None)])
    reg = CollectorRegistry()
    gpu = GpuCollector(nvml=fake).start()
    reg.register(gpu)
    try:
        assert reg.get_sample_value(m.GPU_POWER, {"gpu": "0"}) == 300.0
        assert reg.get_sample_value(m.GPU_POWER, {"gpu": "1"}) is None
        assert reg.get_sample_value(m.GPU_TEMPERATURE, {"gpu": "1"}) == 45
    finally:
        gpu.stop()


def test_init_failure_with_fake_nvml_mock():
    """Fake NVML (mock) whose init fails like a missing driver."""
    fake = FakeNvml(init_error=NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
    reg = CollectorRegistry()
    gpu = GpuCollector(nvml=fake).start()
    reg.register(gpu)
    try:
        assert reg.get_sample_value(m.GPU_AVAILABLE) == 0.0
        assert reg.get_sample_value(m.GPU_UTILIZATION, {"gpu": "0"}) is None
    finally:
        gpu.stop()


def test_stale_snapshot_is_dropped_with_fake_nvml_mock():
    """Fake NVML (mock) + fake clock: a sampler that stopped updating yields no numbers."""
    now = [1000.0]
    gpu = GpuCollector(nvml=FakeNvml(), interval_s=1.0, stale_after_s=5.0, clock=lambda: now[0])
    gpu._init_nvml()
    gpu.sample_once()
    reg = CollectorRegistry()
    reg.register(gpu)
    assert reg.get_sample_value(m.GPU_AVAILABLE) == 1.0
    now[0] += 6
    assert reg.get_sample_value(m.GPU_AVAILABLE) == 0.0
    assert reg.get_sample_value(m.GPU_UTILIZATION, {"gpu": "0"}) is None


def test_sampler_thread_and_history_scrape_does_not_call_nvml_mock():
    """Fake NVML (mock): the background thread samples; a scrape reads memory only."""
    fake = FakeNvml()
    gpu = GpuCollector(nvml=fake, interval_s=0.02, history_size=5).start()
    try:
        deadline = time.monotonic() + 5
        while len(gpu.history()) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(gpu.history()) == 5  # bounded
        fake.devices[0].util = 88
        time.sleep(0.1)
        assert gpu.latest().gpus[0].utilization_ratio == pytest.approx(0.88)
        gpu._stop.set()  # freeze the sampler
        gpu._thread.join(1)
        before = fake.calls
        for _ in range(10):
            list(gpu.collect())
        assert fake.calls == before
    finally:
        gpu.stop()


@pytest.mark.parametrize("has_v2,expected_extra", [(True, 0), (False, 615 * 2**20)])
def test_memory_v2_preferred_with_fake_nvml_mock(has_v2, expected_extra):
    """Fake NVML (mock): memory 'used' comes from the v2 call (as nvidia-smi shows it,
    driver-reserved memory excluded); old drivers without v2 fall back to v1."""
    fake = FakeNvml(has_v2=has_v2)
    gpu = GpuCollector(nvml=fake)
    gpu._init_nvml()
    s = gpu.sample_once()
    assert s.gpus[0].memory_used_bytes == 10 * 2**30 + expected_extra
    assert gpu.sample_once().gpus[0].memory_used_bytes == 10 * 2**30 + expected_extra
