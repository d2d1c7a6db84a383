"""Overview: the KPIs now, each with a sparkline and its delta against the previous period,
and a banner of the alerts that are firing."""
from __future__ import annotations

import time

import streamlit as st

from dashboards import ui
from dashboards.data import alerts as alert_data
from dashboards.data.base import Window


def gpu_utilization(w: Window, interval_s: int):
    g = ui.gpu_source()
    if g is None:
        return None, None, "no GPU source (--prometheus / --node)"
    try:
        if g.available() is False:
            return None, None, "no GPU on the node (seekwatch_gpu_available 0)"
        from dashboards.data.gpu import current_utilization
        from contracts.metrics import GPU_UTILIZATION

        df = g.series(w.start.timestamp(), w.end.timestamp(), interval_s)
        util = df[df["metric"] == GPU_UTILIZATION].groupby("time")["value"].mean()
        return current_utilization(df), list(util.to_numpy() * 100), None
    except Exception as exc:  # noqa: BLE001
        return None, None, f"GPU source error: {exc}"


def render(ctx: ui.Ctx, w: Window) -> None:
    src = ctx.source
    t0 = time.perf_counter()
    fired = alert_data.read_alerts(ui.env("ALERTS_DB"))
    if not fired["firing"].empty:
        f = fired["firing"]
        col = next((c for c in ("alert", "rule", "name", "key") if c in f.columns), f.columns[-1])
        names = ", ".join(map(str, f[col].head(5)))
        st.error(f"{len(fired['firing'])} 条告警触发中 · alerts firing: {names}", icon=":material/local_fire_department:")
    elif fired["error"]:
        st.warning(f"告警状态不可读 · alert state unavailable: {fired['error']}")
    else:
        st.success("无告警 · no alerts firing", icon=":material/check_circle:")

    # this period, the previous one, today, yesterday up to the same time, series
    k, p, today, yday, s = src.overview(w, ctx.interval_s)
    th = ui.thresholds()
    if th.error:
        st.warning(f"告警阈值 alert thresholds: {th.error}")
    spark = lambda col: [float(x) for x in s[col].fillna(0).to_numpy()] if not s.empty else None  # noqa: E731

    st.caption(f"{w.start:%Y-%m-%d %H:%M} → {w.end:%Y-%m-%d %H:%M} UTC · Δ vs previous {ctx.range_label}")
    c = st.columns(4)
    c[0].metric("请求数 Requests", ui.fmt_int(k.requests), ui.delta(k.requests, p.requests, ui.fmt_int),
                chart_data=spark("requests"), border=True)
    turn = ui.judged(k.completion_rate, th.turn, ui.delta(k.completion_rate, p.completion_rate, ui.fmt_pp))
    turn["help"] = ("completed chat turns / chat turns: status completed and no thumbs-down on that turn"
                    + (f"; {turn['help']}" if turn.get("help") else ""))
    c[1].metric("完成率 Completion rate", ui.fmt_pct(k.completion_rate),
                chart_data=[a / b if b else 0 for a, b in zip(s["completed"], s["chat_turns"])] if not s.empty else None,
                border=True, **turn)
    c[2].metric("输出速率 Output tokens/s", ui.fmt_rate(k.tokens_per_s),
                ui.delta(k.tokens_per_s, p.tokens_per_s, ui.fmt_rate),
                chart_data=[x / ctx.interval_s for x in s["output_tokens"]] if not s.empty else None, border=True,
                help="generated tokens / seconds in the range")
    c[3].metric("今日成本 Cost today (UTC)", ui.fmt_usd(today.cost_usd), ui.delta(today.cost_usd, yday.cost_usd, ui.fmt_usd),
                delta_color="inverse", border=True, chart_data=spark("cost_usd"),
                help="sum of the turns' cost_usd since 00:00 UTC; Δ vs yesterday up to the same time")
    c = st.columns(3)
    for i, q in enumerate(("p50", "p95", "p99")):
        cur, prev = getattr(k, f"ttft_{q}"), getattr(p, f"ttft_{q}")
        c[i].metric(f"首字延迟 TTFT {q.upper()}", ui.fmt_ms(cur), chart_data=spark(f"ttft_{q}"), border=True,
                    **ui.judged(cur, th.latency("ttft", int(q[1:]) / 100), ui.delta(cur, prev, ui.fmt_ms)))
    c = st.columns(3)
    for i, q in enumerate(("p50", "p95", "p99")):
        cur, prev = getattr(k, f"e2e_{q}"), getattr(p, f"e2e_{q}")
        c[i].metric(f"端到端延迟 E2E {q.upper()}", ui.fmt_ms(cur), chart_data=spark(f"e2e_{q}"), border=True,
                    **ui.judged(cur, th.latency("e2e", int(q[1:]) / 100), ui.delta(cur, prev, ui.fmt_ms)))
    util, util_series, why = gpu_utilization(w, ctx.interval_s)
    c = st.columns(3)
    c[0].metric("GPU 利用率 GPU utilization", ui.fmt_pct(util), chart_data=util_series, border=True, help=why)
    c[1].metric("会话数 Sessions", ui.fmt_int(k.sessions), ui.delta(k.sessions, p.sessions, ui.fmt_int), border=True)
    dial = ui.judged(k.dialogue_completion_rate, th.dialogue,
                     ui.delta(k.dialogue_completion_rate, p.dialogue_completion_rate, ui.fmt_pp))
    dial["help"] = ("conversations that ended in the range on a completed turn / all that ended"
                    + (f"; {dial['help']}" if dial.get("help") else ""))
    c[2].metric("对话完成率 Dialogue completion", ui.fmt_pct(k.dialogue_completion_rate), border=True, **dial)
    if why:
        st.caption(f"GPU: {why}")
    h = src.health() if hasattr(src, "health") else {}
    if "files" in h and not h["files"]:
        st.warning(f"没有日志文件 · no *.jsonl log files in {getattr(src, 'log_dir', '?')} "
                   "(start the node with --log-dir, or pass --logs DIR / --url)")
    if h.get("set_aside") or h.get("pending_partial_lines"):
        st.caption(f":material/warning: {h.get('set_aside', 0)} unparsable log line(s) set aside; "
                   f"{h.get('pending_partial_lines', 0)} file(s) end in an incomplete line")
    st.caption(f"rendered in {time.perf_counter() - t0:.2f} s from {src.describe()}")


ui.run_page("概览 Overview", render)
