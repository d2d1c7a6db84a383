"""NVML GPU metrics as a prometheus-client custom collector fed by a sampler thread.

Why a background sampler: NVML calls are synchronous C calls that can take milliseconds
(and much longer when a GPU is wedged). A scrape handler runs on the node's event loop, so
``collect()`` only reads the latest snapshot from memory; the sampler thread does the NVML
calls every ``interval_s`` (default 1 s).

Why "absent, not zero": with no GPU (NVML init fails — driver missing, CPU-only box,
container without the device) the ``gpu_*`` series are simply not exposed and
``seekwatch_gpu_available`` is 0. A dashboard then shows "no data" instead of a made-up
0 % utilisation, and the GPU-utilisation alert cannot fire on fake numbers. The same holds
for a stale snapshot (sampler stuck for > ``stale_after_s``) and for a field a device does
not support (e.g. power on some boards): that one series is left out.

The NVML module is injectable (``nvml=``) so the GPU path can be unit-tested with a fake
module on machines without a GPU; production uses ``pynvml`` from nvidia-ml-py.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from contracts import metrics as m

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    """One device at one instant. ``None`` = NVML could not read that field."""

    index: int
    name: str
    utilization_ratio: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_celsius: float | None
    power_watts: float | None


@dataclass(frozen=True)
class GpuSample:
    """A snapshot of all devices, taken at ``timestamp`` (time.time())."""

    timestamp: float
    monotonic: float
    gpus: tuple[GpuReading, ...]


def _load_pynvml() -> ModuleType | None:
    try:
        import pynvml  # nvidia-ml-py
    except Exception as exc:  # pragma: no cover - nvidia-ml-py is a dependency
        log.info("pynvml not importable (%s); GPU metrics disabled", exc)
        return None
    return pynvml


class GpuCollector(Collector):
    """Custom collector: ``registry.register(GpuCollector(...).start())``.

    Public API:
      * ``start()`` — init NVML and start the sampler thread (returns self); never raises.
      * ``stop()`` — stop the thread and shut NVML down.
      * ``available`` — True while NVML works and a fresh snapshot exists.
      * ``latest()`` — the newest :class:`GpuSample` or None.
      * ``history()`` — the last ``history_size`` samples (oldest first), for the dashboard
        and the NVML-vs-nvidia-smi benchmark.
      * ``sample_once()`` — take a snapshot now (used by tests and by ``start``).
    """

    def __init__(self, interval_s: float = 1.0, history_size: int = 600,
                 nvml: Any | None = None, stale_after_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s if stale_after_s is not None else max(5.0, 5 * interval_s)
        self._nvml = nvml
        self._explicit_nvml = nvml is not None
        self._clock = clock
        self._handles: list[Any] = []
        self._names: list[str] = []
        self._initialised = False
        self._history: deque[GpuSample] = deque(maxlen=history_size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error_logged = False
        self.reinit_every_s = 60.0
        self._mem_v2: bool | None = None
        self._last_init_attempt = clock()

    # ------------------------------------------------------------------ lifecycle

    def _init_nvml(self) -> bool:
        if self._initialised:
            return True
        if self._nvml is None and not self._explicit_nvml:
            self._nvml = _load_pynvml()
        if self._nvml is None:
            return False
        nv = self._nvml
        try:
            nv.nvmlInit()
            count = nv.nvmlDeviceGetCount()
            handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            names = []
            for h in handles:
                try:
                    n = nv.nvmlDeviceGetName(h)
                    names.append(n.decode() if isinstance(n, bytes) else str(n))
                except Exception:
                    names.append("unknown")
        except Exception as exc:
            if not self._error_logged:
                log.info("NVML unavailable (%s): GPU metrics absent, %s=0", exc, m.GPU_AVAILABLE)
                self._error_logged = True
            return False
        self._handles, self._names = handles, names
        self._initialised = True
        self._error_logged = False
        log.info("NVML: %d GPU(s): %s", len(handles), ", ".join(names))
        return True

    def start(self) -> "GpuCollector":
        """Initialise NVML and start sampling in a daemon thread. Never raises: no GPU
        just means ``available`` stays False."""
        if self._thread is not None:
            return self
        if self._init_nvml():
            self.sample_once()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="seekwatch-nvml", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the sampler and release NVML."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._initialised and self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
        self._initialised = False

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self._initialised:
                # Retry init rarely: a driver can come up after the node (k8s device plugin).
                now = self._clock()
                if now - self._last_init_attempt >= self.reinit_every_s:
                    self._last_init_attempt = now
                    self._init_nvml()
                if not self._initialised:
                    continue
            self.sample_once()

    # ------------------------------------------------------------------ sampling

    def _read(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:
            return None

    def _memory(self, h: Any) -> Any:
        """Memory info, v2 first: since R510 the v1 ``used`` also counts memory the driver
        reserves for itself (~600 MiB on an H200), while nvidia-smi shows v2's ``used``
        (allocations only). Measured in docs/metrics.md; v1 is the fallback for old drivers."""
        nv = self._nvml
        v2 = getattr(nv, "nvmlMemory_v2", None)
        if v2 is not None and self._mem_v2 is not False:
            try:
                info = nv.nvmlDeviceGetMemoryInfo(h, version=v2)
                self._mem_v2 = True
                return info
            except Exception:
                if self._mem_v2 is None:
                    self._mem_v2 = False  # not supported by this driver: stop asking
        return self._read(lambda: nv.nvmlDeviceGetMemoryInfo(h))

    def sample_once(self) -> GpuSample | None:
        """Read every device now and append the snapshot to the history."""
        if not self._initialised:
            return None
        nv = self._nvml
        readings = []
        try:
            for i, h in enumerate(self._handles):
                util = self._read(lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu)
                mem = self._memory(h)
                temp = self._read(lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
                power_mw = self._read(lambda: nv.nvmlDeviceGetPowerUsage(h))
                readings.append(GpuReading(
                    index=i,
                    name=self._names[i] if i < len(self._names) else "unknown",
                    utilization_ratio=None if util is None else float(util) / 100.0,
                    memory_used_bytes=None if mem is None else int(mem.used),
                    memory_total_bytes=None if mem is None else int(mem.total),
                    temperature_celsius=None if temp is None else float(temp),
                    power_watts=None if power_mw is None else float(power_mw) / 1000.0,
                ))
        except Exception as exc:  # a wedged driver: the last good sample goes stale
            log.warning("NVML sample failed: %s", exc)
            return None
        sample = GpuSample(timestamp=time.time(), monotonic=self._clock(), gpus=tuple(readings))
        with self._lock:
            self._history.append(sample)
        return sample

    def latest(self) -> GpuSample | None:
        with self._lock:
            return self._history[-1] if self._history else None

    def history(self) -> list[GpuSample]:
        with self._lock:
            return list(self._history)

    def _fresh(self) -> GpuSample | None:
        s = self.latest()
        if s is None or not self._initialised:
            return None
        if self._clock() - s.monotonic > self.stale_after_s:
            return None
        return s

    @property
    def available(self) -> bool:
        return self._fresh() is not None

    # ------------------------------------------------------------------ exposition

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Only gpu_available is unconditional; returning it lets registry conflict checks work
        # without triggering a collect() at registration time.
        yield GaugeMetricFamily(m.GPU_AVAILABLE, "1 when NVML reports at least one GPU with fresh readings, else 0.")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sample = self._fresh()
        avail = GaugeMetricFamily(
            m.GPU_AVAILABLE, "1 when NVML reports at least one GPU with fresh readings, else 0.",
            value=1.0 if (sample is not None and sample.gpus) else 0.0)
        yield avail
        if sample is None or not sample.gpus:
            return
        fams = {
            "utilization_ratio": GaugeMetricFamily(
                m.GPU_UTILIZATION, "GPU busy fraction over NVML's last sample period (0-1).", labels=["gpu"]),
            "memory_used_bytes": GaugeMetricFamily(
                m.GPU_MEMORY_USED, "GPU memory in use, bytes.", labels=["gpu"]),
            "memory_total_bytes": GaugeMetricFamily(
                m.GPU_MEMORY_TOTAL, "GPU memory installed, bytes.", labels=["gpu"]),
            "temperature_celsius": GaugeMetricFamily(
                m.GPU_TEMPERATURE, "GPU core temperature, degrees Celsius.", labels=["gpu"]),
            "power_watts": GaugeMetricFamily(
                m.GPU_POWER, "GPU board power draw, watts.", labels=["gpu"]),
        }
        for r in sample.gpus:
            for attr, fam in fams.items():
                v = getattr(r, attr)
                if v is not None:
                    fam.add_metric([str(r.index)], float(v))
        for fam in fams.values():
            if fam.samples:
                yield fam
