"""The running dashboard in headless Debian Chromium (Playwright drives the system browser, no
download): the page is not blank, key labels and numbers are in the DOM, Chinese renders.
With SEEKWATCH_UPDATE_SCREENSHOT=1 it refreshes docs/img/dashboard.png (committed for the README)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.ports import free_port, wait_for_port
from tests.fixtures.processes import stop_process_group

from .conftest import END

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture
def dashboard(fixture_logs, tmp_path):
    port = free_port()
    log = open(tmp_path / "streamlit.log", "w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEEKWATCH_DASHBOARD_")}
    proc = subprocess.Popen([sys.executable, "-m", "seekwatch", "dashboard", "--logs", str(fixture_logs), "--port", str(port),
                             "--now", END.isoformat(), "--cache-dir", str(tmp_path / "cache"),
                             "--insecure-no-auth"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(proc)  # nothing of the dashboard may outlive the test
        log.close()


def test_screenshot(dashboard, expected, tmp_path):
    from tests.fixtures.tools import require_tool

    require_tool(CHROMIUM)
    from playwright.sync_api import sync_playwright

    shot = tmp_path / "dashboard.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1350}, device_scale_factor=1)
            page.goto(dashboard + "/", wait_until="domcontentloaded", timeout=60_000)
            page.wait_for_selector("[data-testid=stMetricValue]", timeout=60_000)
            page.wait_for_function("document.querySelectorAll('[data-testid=stMetricValue]').length >= 13", timeout=60_000)
            page.wait_for_timeout(1500)  # let the sparklines draw
            body = page.inner_text("body")
            page.screenshot(path=str(shot), full_page=False)
        finally:
            browser.close()
    for label in ("概览 Overview", "请求数 Requests", "首字延迟 TTFT P99", "完成率 Completion rate", "今日成本 Cost today (UTC)"):
        assert label in body, label
    assert f"{expected.requests:,}" in body
    assert f"{expected.ttft_p99:,.0f} ms" in body
    assert f"{expected.completion_rate * 100:.1f} %" in body
    # not blank: a real picture has many distinct colours
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "screenshot looks blank"
    # refresh the committed README image only when asked, so test runs leave the tree clean
    if os.environ.get("SEEKWATCH_UPDATE_SCREENSHOT") == "1":
        out = ROOT / "docs" / "img" / "dashboard.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, out)
