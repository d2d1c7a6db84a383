"""Every page under Streamlit's AppTest, on fixture logs: the numbers shown equal the ones
conftest.Expected computes from the raw records (plain Python)."""
from __future__ import annotations

import datetime as dt
import http.server
import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from .conftest import END, LEAKY_PROMPT, Expected

VIEWS = Path(__file__).resolve().parents[2] / "dashboards" / "views"
APP = VIEWS.parent / "app.py"
MONTH_S = 730 * 3600


def run(page: str) -> AppTest:
    at = AppTest.from_file(str(VIEWS / f"{page}.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def metrics(at: AppTest) -> dict[str, tuple[str, str | None]]:
    return {m.label: (m.value, m.delta) for m in at.metric}


def ms(v):
    return f"{v:,.0f} ms"


def pct(v):
    return f"{v * 100:.1f} %"


def usd(v):
    return f"${v:,.2f}" if abs(v) >= 1 else f"${v:.4f}"


def test_overview(dash_env, expected, fixture_records):
    m = metrics(run("overview"))
    prev = Expected(fixture_records, END - dt.timedelta(hours=48), END - dt.timedelta(hours=24))
    today = Expected(fixture_records, END.replace(hour=0), END)
    yday = Expected(fixture_records, END.replace(hour=0) - dt.timedelta(days=1), END - dt.timedelta(days=1))
    assert m["请求数 Requests"] == (f"{expected.requests:,}", f"{expected.requests - prev.requests:+,}")
    assert m["完成率 Completion rate"][0] == pct(expected.completion_rate)
    assert m["输出速率 Output tokens/s"][0] == f"{expected.tokens_per_s:,.1f} tok/s"
    d = today.cost_usd - yday.cost_usd
    assert m["今日成本 Cost today (UTC)"] == (usd(today.cost_usd), ("+" if d >= 0 else "-") + usd(abs(d)))
    for q in ("p50", "p95", "p99"):
        assert m[f"首字延迟 TTFT {q.upper()}"][0] == ms(getattr(expected, f"ttft_{q}"))
        assert m[f"端到端延迟 E2E {q.upper()}"][0] == ms(getattr(expected, f"e2e_{q}"))
    assert m["会话数 Sessions"][0] == f"{expected.sessions:,}"
    assert m["对话完成率 Dialogue completion"][0] == pct(expected.dialogue_completion_rate)
    assert m["GPU 利用率 GPU utilization"][0] == "—"  # no GPU source configured: no number invented


def test_latency(dash_env, expected):
    at = run("latency")
    m = metrics(at)
    assert m["首字延迟 TTFT P99"][0] == ms(expected.ttft_p99)
    slow = at.dataframe[0].value
    assert slow.iloc[0]["ttft_ms"] == max(r["ttft_ms"] for r in expected.turns if r["ttft_ms"] is not None)
    at.radio(key="lat_metric").set_value("端到端延迟 End-to-end").run()
    m = metrics(at)
    assert m["端到端延迟 End-to-end P95"][0] == ms(expected.e2e_p95)
    slow = at.dataframe[0].value
    top = max(expected.turns, key=lambda r: r["latency_ms"])
    assert slow.iloc[0]["request_id"] == top["request_id"]


def test_quality(dash_env, expected):
    at = run("quality")
    m = metrics(at)
    assert m["轮次完成率 Turn completion"][0] == pct(expected.completion_rate)
    assert m["对话完成率 Dialogue completion"][0] == pct(expected.dialogue_completion_rate)
    assert m["差评 Rated down"][0] == f"{expected.rated_down:,}"
    assert m["拒答 Refused"][0] == f"{expected.refused:,}"
    table = at.dataframe[0].value.set_index("model_version")
    assert set(table.index) == set(expected.by_model)
    for model, want in expected.by_model.items():
        for col, v in want.items():
            assert table.loc[model, col] == v, (model, col)


def test_cost(dash_env, expected):
    at = run("cost")
    m = metrics(at)
    day = 1200 * 86400 / MONTH_S  # 39.4521 $: the range is 24 h
    tokens = expected.input_tokens + expected.output_tokens
    assert m["每千 token 成本 Cost / 1k tokens"][0] == usd(day / tokens * 1000)
    assert m["每会话成本 Cost / session"][0] == usd(day / expected.sessions)
    assert m["每完成对话成本 Cost / completed dialogue"][0] == usd(day / expected.completed_dialogues)
    assert m["每日成本 Cost / day"][0] == "$39.45"
    assert m["月度预测 Monthly projection"][0] == "$1,200.00"
    assert m["已用容量成本 Used (Σ cost_usd)"][0] == usd(expected.cost_usd)
    # the split by request kind, recounted from the records (no request_kind = chat)
    kinds = next(d.value for d in at.dataframe if "request_kind" in d.value.columns).set_index("request_kind")
    for kind in ("chat", "title"):
        rows = [r for r in expected.turns if r.get("request_kind", "chat") == kind]
        assert kinds.loc[kind, "requests"] == len(rows)
        assert kinds.loc[kind, "cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows), rel=1e-9)
        assert kinds.loc[kind, "output_tokens"] == sum(r["gen_ai"]["usage"]["output_tokens"] for r in rows)


class _Metrics(http.server.BaseHTTPRequestHandler):
    body = (b"# TYPE seekwatch_gpu_available gauge\nseekwatch_gpu_available 1\n"
            b"# TYPE seekwatch_gpu_utilization_ratio gauge\n"
            b'seekwatch_gpu_utilization_ratio{gpu="0"} 0.5\nseekwatch_gpu_utilization_ratio{gpu="1"} 0.7\n'
            b"# TYPE seekwatch_gpu_temperature_celsius gauge\n"
            b'seekwatch_gpu_temperature_celsius{gpu="0"} 61\nseekwatch_gpu_temperature_celsius{gpu="1"} 65\n')

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *a):
        pass


@pytest.fixture
def fake_node():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_gpu_from_node_metrics(dash_env, fake_node):
    dash_env.setenv("SEEKWATCH_DASHBOARD_NODE", fake_node)
    dash_env.setenv("SEEKWATCH_DASHBOARD_NOW", dt.datetime.now(dt.timezone.utc).isoformat())
    m = metrics(run("gpu"))
    assert m["GPU 利用率 utilization (latest, mean)"][0] == "60.0 %"   # (0.5 + 0.7) / 2
    assert m["温度 temperature (latest, mean)"][0] == "63.0 °C"


def test_gpu_without_source(dash_env):
    at = run("gpu")
    assert "no GPU source" in at.info[0].value


def test_alerts_from_alertd_state(dash_env, tmp_path):
    import time

    from monitor.alerting.state import connect

    db = tmp_path / "alertd.sqlite"
    c = connect(db)
    now = time.time()
    c.execute("INSERT INTO alerts(key,labels,state,active_at,fired_at,value,threshold) VALUES "
              "('p99','{\"alertname\":\"P99Latency\"}','firing',?,?,0.71,0.5),"
              "('gpu','{\"alertname\":\"GpuBusy\"}','pending',?,NULL,0.93,0.9)", (now - 600, now - 300, now - 60))
    c.execute("INSERT INTO events(t,key,labels,event,value) VALUES (?,'p99','{\"alertname\":\"P99Latency\"}','firing',0.71)",
              (now - 300,))
    c.close()
    dash_env.setenv("SEEKWATCH_DASHBOARD_ALERTS_DB", str(db))
    at = run("alerts")
    assert metrics(at)["触发中 Firing"][0] == "1"
    assert list(at.dataframe[0].value["alert"]) == ["P99Latency"]
    assert "P99Latency" in list(at.dataframe[1].value["alert"])
    ov = run("overview")
    assert "1 条告警触发中" in ov.error[0].value and "P99Latency" in ov.error[0].value


def test_sessions_masked_conversation(dash_env, fixture_records):
    first = next(r for r in fixture_records if r["prompt"] == LEAKY_PROMPT)
    dash_env.setenv("SEEKWATCH_DASHBOARD_NOW", (END + dt.timedelta(days=10)).isoformat())
    at = AppTest.from_file(str(VIEWS / "sessions.py"), default_timeout=60)
    at.run()
    at.selectbox(key="sw_range").set_value("30 d")
    at.text_input(key="ses_id").set_value(first["session_id"]).run()
    assert not at.exception, at.exception
    turns = [r for r in fixture_records if r.get("session_id") == first["session_id"] and "status" in r]
    table = at.dataframe[0].value
    assert sorted(table["request_id"]) == sorted(r["request_id"] for r in turns)
    shown = " ".join(t.value for t in at.text)
    assert "13812345678" not in shown and "zhang.san@example.com" not in shown
    assert "[PHONE]" in shown and "[EMAIL]" in shown
    assert "13812345678" not in " ".join(table["prompt"])
    assert len(at.chat_message) == 2 * len(turns)


def test_app_navigation(dash_env):
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert "请求数 Requests" in metrics(at)
    for page in ("latency", "quality", "cost", "gpu", "alerts", "sessions"):
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, (page, at.exception)


def test_custom_day_range(dash_env, fixture_records):
    at = AppTest.from_file(str(VIEWS / "overview.py"), default_timeout=60)
    at.run()
    at.selectbox(key="sw_range").set_value("自定义 custom days").run()
    at.date_input(key="sw_days").set_value((dt.date(2026, 11, 28), dt.date(2026, 11, 28))).run()
    assert not at.exception, at.exception
    day = Expected(fixture_records, dt.datetime(2026, 11, 28, tzinfo=dt.timezone.utc), dt.datetime(2026, 11, 29, tzinfo=dt.timezone.utc))
    assert metrics(at)["请求数 Requests"][0] == f"{day.requests:,}"
    assert metrics(at)["首字延迟 TTFT P95"][0] == ms(day.ttft_p95)


def test_auto_refresh_fragment(dash_env, expected):
    at = AppTest.from_file(str(VIEWS / "overview.py"), default_timeout=60)
    at.run()
    at.selectbox(key="sw_refresh").set_value("10 s").run()
    assert not at.exception, at.exception
    assert metrics(at)["请求数 Requests"][0] == f"{expected.requests:,}"


def test_empty_log_dir_says_so(dash_env, tmp_path):
    dash_env.setenv("SEEKWATCH_DASHBOARD_LOGS", str(tmp_path / "nothing-here"))
    at = run("overview")
    assert metrics(at)["请求数 Requests"][0] == "0"
    assert any("no *.jsonl log files" in w.value for w in at.warning)
    for page in ("latency", "quality", "cost", "sessions"):
        run(page)  # no data: no exception
