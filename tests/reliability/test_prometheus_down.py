"""Fault: the Prometheus that alertd queries (``prometheus_url``) goes down, then comes back.

Real processes: ``prometheus`` (Debian package) scraping a loopback metrics node, a real
``seekwatch alertd`` process using the PromQL source, and a webhook receiver. What
docs/alerts.md promises, checked end to end:

* Prometheus unreachable is a ``no_data`` alert (critical) whose node is Prometheus'
  ``host:port`` and whose message says why — never a silent green;
* the alert that was firing before the outage keeps its state (no "resolved" for it while
  nothing can be known);
* once Prometheus is back (same port, same TSDB), ``no_data`` resolves, and nothing is sent
  twice.

(``PromQLSource`` raising ``SourceError`` on an unreachable URL is unit-tested in
tests/alerting/test_prometheus_source.py; this is the daemon's behaviour through a real outage.)
"""
from __future__ import annotations

import time
from pathlib import Path

import httpx

from contracts.supervisor import ProcessSpec, Supervised, start
from tests.alerting.conftest import Driver, Recorder, fast_config, start_alertd_process
from tests.fixtures.ports import free_port
from tests.fixtures.prometheus import PROMETHEUS_BIN, prometheus_config


def start_prometheus(work: Path, port: int, target: str) -> Supervised:
    work.mkdir(exist_ok=True)
    (work / "prometheus.yml").write_text(prometheus_config([target], scrape_interval="1s"))
    proc = start(ProcessSpec(name="prometheus", cwd=work, output=work / "prometheus.log", argv=[
        PROMETHEUS_BIN, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]))

    def scraped() -> bool:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": "up == 1"}, timeout=2,
                          trust_env=False)
            return r.status_code == 200 and bool(r.json()["data"]["result"])
        except httpx.HTTPError:
            return False

    try:
        proc.wait_ready(scraped, 60, what="scraping its target")
    except BaseException:
        proc.stop()
        raise
    return proc


def stop(proc: Supervised) -> None:
    proc.stop()


def alerts(hook: Recorder, status: str, rule: str) -> list[dict]:
    return [a for b in hook.bodies(status) for a in b["alerts"] if a["labels"]["rule"] == rule]


def test_prometheus_outage_raises_no_data_keeps_other_state_and_resolves(tmp_path, metrics_node):
    node = metrics_node()
    hook = Recorder()
    port = free_port()
    prom_work = tmp_path / "prometheus"
    prom = start_prometheus(prom_work, port, node.target)
    cfg = fast_config(tmp_path, prometheus_url=f"http://127.0.0.1:{port}",
                      receivers=[{"type": "webhook", "url": hook.url}],
                      rules={"completion_rate": None, "scaling": None, "gpu_utilization": None})
    log = tmp_path / "alertd.log"
    alertd = start_alertd_process(cfg, log)
    slow = Driver(node, 0.9)                      # TTFT 900 ms: p99_latency fires
    try:
        assert hook.wait_for(lambda: alerts(hook, "firing", "p99_latency"), timeout=25), log.read_text()
        assert not alerts(hook, "firing", "no_data")

        stop(prom)                                 # Prometheus down
        t_down = time.time()
        assert hook.wait_for(lambda: alerts(hook, "firing", "no_data"), timeout=15), log.read_text()
        nd = alerts(hook, "firing", "no_data")[0]
        assert nd["labels"]["node"] == f"127.0.0.1:{port}"
        assert nd["labels"].get("severity", nd.get("severity", "critical")) == "critical"
        assert "unreachable" in str(nd).lower(), nd
        assert hook.requests[-1].t - t_down < 2 + 2 * 1 + 3   # for 2s + two evaluation intervals
        time.sleep(3)                              # still down: latency alert neither resolved nor re-sent
        assert not alerts(hook, "resolved", "p99_latency")
        assert len(alerts(hook, "firing", "p99_latency")) == 1
        assert alertd.poll() is None
        assert "source error" in log.read_text()   # and it says so in its log

        prom = start_prometheus(prom_work, port, node.target)   # back, same port and TSDB
        assert hook.wait_for(lambda: alerts(hook, "resolved", "no_data"), timeout=20), log.read_text()
        time.sleep(2)
        assert len(alerts(hook, "firing", "no_data")) == 1 and len(alerts(hook, "resolved", "no_data")) == 1
        assert len(alerts(hook, "firing", "p99_latency")) == 1   # no duplicate after the outage
        assert not alerts(hook, "resolved", "p99_latency")        # still slow: still firing
    finally:
        slow.stop()
        alertd.stop()
        stop(prom)
        hook.stop()
