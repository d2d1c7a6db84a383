"""GPU series for the GPU page and the Overview KPI: from Prometheus (``query_range``) or, with
no Prometheus, by scraping the node's own ``/metrics`` on every refresh and keeping the samples
seen since the dashboard started (the exposition only has the value *now*).

No GPU on the node: ``seekwatch_gpu_available 0`` and no gpu_* series — shown as such, never
as zeros.
"""
from __future__ import annotations

import collections
import json
import threading
import time
import urllib.parse
import urllib.request

import pandas as pd

from contracts import metrics as M

#: metric -> (title, unit, scale applied to the raw value)
GPU_METRICS = {
    M.GPU_UTILIZATION: ("GPU 利用率 utilization", "%", 100.0),
    M.GPU_MEMORY_USED: ("显存 memory used", "GiB", 1 / 2**30),
    M.GPU_MEMORY_TOTAL: ("显存总量 memory total", "GiB", 1 / 2**30),
    M.GPU_TEMPERATURE: ("温度 temperature", "°C", 1.0),
    M.GPU_POWER: ("功率 power", "W", 1.0),
}
COLUMNS = ["time", "metric", "gpu", "value"]


def _get(url: str, timeout: float = 5.0) -> bytes:
    req = urllib.request.Request(url, headers={"Accept": "application/json, text/plain"})
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - operator-given URL
        return r.read()


class PrometheusGpu:
    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def describe(self) -> str:
        return f"Prometheus: {self.url}"

    def available(self) -> bool | None:
        try:
            body = json.loads(_get(f"{self.url}/api/v1/query?query={urllib.parse.quote(M.GPU_AVAILABLE)}"))
            res = body["data"]["result"]
            return bool(res) and any(float(r["value"][1]) > 0 for r in res)
        except Exception:  # noqa: BLE001 - shown as "unknown"
            return None

    def series(self, start: float, end: float, step_s: int) -> pd.DataFrame:
        rows: list[tuple] = []
        for metric in GPU_METRICS:
            q = urllib.parse.urlencode({"query": metric, "start": start, "end": end, "step": max(1, int(step_s))})
            body = json.loads(_get(f"{self.url}/api/v1/query_range?{q}"))
            if body.get("status") != "success":
                raise RuntimeError(body.get("error", "query_range failed"))
            for res in body["data"]["result"]:
                gpu = res["metric"].get("gpu", "?")
                rows += [(float(t), metric, gpu, float(v)) for t, v in res["values"]]
        df = pd.DataFrame(rows, columns=COLUMNS)
        df["time"] = pd.to_datetime(df["time"], unit="s", utc=True)
        return df


class NodeMetricsGpu:
    """Scrapes ``<node>/metrics``; keeps up to ``keep`` scrapes in memory."""

    def __init__(self, url: str, keep: int = 2880):
        self.url = url.rstrip("/")
        if not self.url.endswith("/metrics"):
            self.url += "/metrics"
        self._samples: collections.deque = collections.deque(maxlen=keep * 8 * len(GPU_METRICS))
        self._available: bool | None = None
        self._lock = threading.Lock()
        self._last = 0.0

    def describe(self) -> str:
        return f"node /metrics: {self.url}"

    def scrape(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        text = _get(self.url).decode("utf-8", "replace")
        now = time.time()
        avail = None
        rows = []
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == M.GPU_AVAILABLE:
                    avail = s.value > 0
                elif s.name in GPU_METRICS:
                    rows.append((now, s.name, s.labels.get("gpu", "?"), float(s.value)))
        with self._lock:
            self._available = avail if avail is not None else bool(rows)
            self._samples.extend(rows)
            self._last = now

    def available(self) -> bool | None:
        if time.time() - self._last > 2:
            try:
                self.scrape()
            except Exception:  # noqa: BLE001
                return None
        return self._available

    def series(self, start: float, end: float, step_s: int) -> pd.DataFrame:
        if time.time() - self._last > 2:
            self.scrape()
        with self._lock:
            rows = [r for r in self._samples if start <= r[0] <= end + 60]  # the scrape is "now"
        df = pd.DataFrame(rows, columns=COLUMNS)
        df["time"] = pd.to_datetime(df["time"], unit="s", utc=True)
        return df


def current_utilization(df: pd.DataFrame) -> float | None:
    """Mean utilization ratio across GPUs at the latest sample."""
    u = df[df["metric"] == M.GPU_UTILIZATION]
    if u.empty:
        return None
    last = u[u["time"] == u["time"].max()]
    return float(last["value"].mean())
