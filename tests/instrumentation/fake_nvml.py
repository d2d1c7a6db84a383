"""A fake ``pynvml`` module (mock) for testing the GPU path on machines without a GPU.

Only what inference.gpu calls is implemented. Values are set per device by the test.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


@dataclass
class FakeDevice:
    name: str = "NVIDIA H200"
    util: int = 50                 # percent
    mem_used: int = 10 * 2**30
    mem_total: int = 141 * 2**30
    mem_reserved: int = 615 * 2**20
    temp: int = 45
    power_mw: int | None = 300_000  # None -> NotSupported


@dataclass
class FakeNvml:
    devices: list[FakeDevice] = field(default_factory=lambda: [FakeDevice()])
    init_error: Exception | None = None
    calls: int = 0
    has_v2: bool = True
    nvmlMemory_v2: int = 0x02000028
    NVML_TEMPERATURE_GPU: int = 0
    NVMLError: type = NVMLError

    def nvmlInit(self):
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return self.devices[h].name

    def nvmlDeviceGetUtilizationRates(self, h):
        self.calls += 1
        return SimpleNamespace(gpu=self.devices[h].util, memory=0)

    def nvmlDeviceGetMemoryInfo(self, h, version=None):
        """v1: ``used`` includes driver-reserved memory; v2 (like nvidia-smi) excludes it."""
        self.calls += 1
        d = self.devices[h]
        if version is None:
            used = d.mem_used + d.mem_reserved
            return SimpleNamespace(used=used, total=d.mem_total, free=d.mem_total - used)
        if not self.has_v2:
            raise NVMLError("Function Not Found")
        return SimpleNamespace(version=version, used=d.mem_used, reserved=d.mem_reserved,
                               total=d.mem_total, free=d.mem_total - d.mem_used - d.mem_reserved)

    def nvmlDeviceGetTemperature(self, h, sensor):
        self.calls += 1
        return self.devices[h].temp

    def nvmlDeviceGetPowerUsage(self, h):
        self.calls += 1
        if self.devices[h].power_mw is None:
            raise NVMLError_NotSupported("Not Supported")
        return self.devices[h].power_mw
