"""GPU series through a real Prometheus (Debian package, tests/fixtures/prometheus.py) scraping a
node-like exposition: query_range feeds the GPU page and the Overview KPI; a node without GPU
shows "no GPU", never zeros."""
from __future__ import annotations

import datetime as dt

import pytest
from streamlit.testing.v1 import AppTest

from .test_pages import VIEWS, metrics

@pytest.fixture(autouse=True)
def _prometheus():
    from tests.fixtures.tools import require_tool

    require_tool("prometheus")


def _page(name: str) -> AppTest:
    at = AppTest.from_file(str(VIEWS / f"{name}.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def test_gpu_page_and_overview_from_prometheus(dash_env, metrics_node, prometheus_server):
    node = metrics_node(gpus=2)
    node.gpu_util.labels("0").set(0.5)
    node.gpu_util.labels("1").set(0.7)
    prom = prometheus_server([node.target], scrape_interval="1s")
    prom.wait_for_series("seekwatch_gpu_utilization_ratio", count=2)
    dash_env.setenv("SEEKWATCH_DASHBOARD_PROMETHEUS", prom.url)
    dash_env.setenv("SEEKWATCH_DASHBOARD_NOW", dt.datetime.now(dt.timezone.utc).isoformat())
    m = metrics(_page("gpu"))
    assert m["GPU 利用率 utilization (latest, mean)"][0] == "60.0 %"
    assert metrics(_page("overview"))["GPU 利用率 GPU utilization"][0] == "60.0 %"


def test_no_gpu_is_not_zero(dash_env, metrics_node, prometheus_server):
    node = metrics_node(gpus=0)
    prom = prometheus_server([node.target], scrape_interval="1s")
    prom.wait_for_series("seekwatch_gpu_available", count=1)
    dash_env.setenv("SEEKWATCH_DASHBOARD_PROMETHEUS", prom.url)
    dash_env.setenv("SEEKWATCH_DASHBOARD_NOW", dt.datetime.now(dt.timezone.utc).isoformat())
    at = _page("gpu")
    assert "no GPU" in at.warning[0].value and not at.metric
    assert metrics(_page("overview"))["GPU 利用率 GPU utilization"][0] == "—"
