"""The running dashboard in headless Debian Chromium (Playwright drives the system browser, no
download): the page is not blank, key labels and numbers are in the DOM, Chinese renders.
With SEEKWATCH_UPDATE_SCREENSHOT=1 it refreshes docs/img/dashboard.png (committed for the README).

Every page is also opened at 1400x1300 and its charts measured in the SVG the browser drew
(chart_geometry.js): each expected chart is there and draws its data, every bar is at least
4 px thick, and no two visible labels overlap — what a broken chart looks like (bars squeezed
into lines, labels printed on top of each other), measured instead of compared as pixels."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from contracts.supervisor import ProcessSpec, start
from tests.fixtures.ports import free_port, wait_for_port

from .conftest import END

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_node():
    """A loopback /metrics with two GPUs behind the GPU page."""
    import http.server
    import threading

    from .test_pages import _Metrics

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def dashboard(fixture_logs, tmp_path_factory, gpu_node):
    tmp = tmp_path_factory.mktemp("browser")
    port = free_port()
    proc = start(ProcessSpec(
        name="dashboard", argv=[sys.executable, "-m", "seekwatch", "dashboard", "--logs", str(fixture_logs),
                                "--port", str(port), "--now", END.isoformat(), "--cache-dir", str(tmp / "cache"),
                                "--node", gpu_node, "--insecure-no-auth"],
        output=tmp / "streamlit.log", cwd=ROOT, unset_env=[k for k in os.environ if k.startswith("SEEKWATCH_DASHBOARD_")]))
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()  # the one supervisor: nothing of the dashboard may outlive the test


def test_screenshot(dashboard, browser, expected, tmp_path):
    shot = tmp_path / "dashboard.png"
    page = browser.new_page(viewport={"width": 1440, "height": 1350}, device_scale_factor=1)
    try:
        page.goto(dashboard + "/", wait_until="domcontentloaded", timeout=60_000)
        page.wait_for_selector("[data-testid=stMetricValue]", timeout=60_000)
        page.wait_for_function("document.querySelectorAll('[data-testid=stMetricValue]').length >= 13", timeout=60_000)
        page.wait_for_timeout(1500)  # let the sparklines draw
        body = page.inner_text("body")
        page.screenshot(path=str(shot), full_page=False)
    finally:
        page.close()
    for label in ("概览 Overview", "请求数 Requests", "首字延迟 TTFT P99", "完成率 Completion rate", "今日成本 Cost today (UTC)"):
        assert label in body, label
    assert f"{expected.requests:,}" in body
    assert f"{expected.ttft_p99:,.0f} ms" in body
    assert f"{expected.completion_rate * 100:.1f} %" in body
    # not blank: a real picture has many distinct colours
    assert_not_blank(shot)
    # refresh the committed README image only when asked, so test runs leave the tree clean
    if os.environ.get("SEEKWATCH_UPDATE_SCREENSHOT") == "1":
        out = ROOT / "docs" / "img" / "dashboard.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, out)


def assert_not_blank(shot: Path) -> None:
    """A real picture has many distinct colours; a blank or error page has a handful."""
    from PIL import Image

    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, f"{shot.name} looks blank"


GEOMETRY_JS = (Path(__file__).with_name("chart_geometry.js")).read_text("utf-8")
#: page path -> (title in the page, the Vega charts it must draw)
PAGES = {
    "": ("概览 Overview", 10),        # the KPI cards' sparklines
    "latency": ("延迟 Latency", 2),   # percentiles over time, histogram
    "quality": ("质量 Quality", 4),   # completion over time, two by-model charts, by turn index
    "cost": ("成本 Cost", 4),         # deployment modes, versus API prices, by request kind, load
    # the node's /metrics is scraped now, outside the range pinned by --now: the page says so
    # (its charts are measured in test_pages.py's GPU test data only as numbers)
    "gpu": ("no GPU samples in this range", 0),
    "alerts": ("告警 Alerts", 0),
    "sessions": ("会话 Sessions", 0),
}
MIN_BAR_PX = 4


def _band(bars: list[dict]) -> list[float]:
    """The bars' thickness: of width and height, the one that is the same for every bar."""
    if len(bars) == 1:
        return [min(bars[0]["w"], bars[0]["h"])]
    ws, hs = [b["w"] for b in bars], [b["h"] for b in bars]
    spread = lambda v: (max(v) - min(v)) / (max(v) or 1)  # noqa: E731
    return ws if spread(ws) <= spread(hs) else hs


@pytest.mark.parametrize("path", list(PAGES))
def test_page_charts_are_drawn_and_legible(dashboard, browser, path, tmp_path):
    title, n_charts = PAGES[path]
    page = browser.new_page(viewport={"width": 1400, "height": 1300}, device_scale_factor=1)
    try:
        page.goto(f"{dashboard}/{path}", wait_until="domcontentloaded", timeout=60_000)
        page.wait_for_function(f"document.body.innerText.includes({title!r})", timeout=60_000)
        page.wait_for_function(f"document.querySelectorAll('.vega-embed svg').length >= {n_charts}", timeout=60_000)
        page.wait_for_timeout(1500)  # Vega lays out after the element appears
        charts = page.evaluate(GEOMETRY_JS)
        errors = page.locator("[data-testid=stException]").count()
        shot = tmp_path / f"page-{path or 'overview'}.png"
        page.screenshot(path=str(shot), full_page=True)
    finally:
        page.close()
    assert errors == 0, f"/{path}: the page raised"
    assert_not_blank(shot)
    assert len(charts) >= n_charts, (path, len(charts))
    for c in charts:
        where = f"/{path} chart {c['idx']} ({c['width']:.0f}x{c['height']:.0f})"
        assert c["svg"] and c["marks"] and c["drawn"], f"{where}: empty chart"
        if c["bars"]:
            thin = [x for x in _band([b for b in c["bars"] if max(b["w"], b["h"]) > 0.5] or c["bars"]) if x < MIN_BAR_PX]
            assert not thin, f"{where}: bars {thin} px thick (< {MIN_BAR_PX})"
        assert not c["overlaps"], f"{where}: labels overlap: {c['overlaps']}"
