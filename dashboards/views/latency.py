"""Latency: percentile series over time, a histogram, and the slowest turns."""
from __future__ import annotations

import streamlit as st

from dashboards import ui
from dashboards.data.base import Window

METRICS = {"首字延迟 TTFT": ("ttft", "ttft_ms"), "端到端延迟 End-to-end": ("e2e", "latency_ms")}


def render(ctx: ui.Ctx, w: Window) -> None:
    src = ctx.source
    label = st.radio("指标 Metric", list(METRICS), horizontal=True, key="lat_metric")
    prefix, field = METRICS[label]
    k = src.kpis(w)
    th = ui.thresholds()
    c = st.columns(3)
    for i, q in enumerate(("p50", "p95", "p99")):
        v = getattr(k, f"{prefix}_{q}")
        c[i].metric(f"{label} {q.upper()}", ui.fmt_ms(v), border=True,
                    **ui.judged(v, th.latency(prefix, int(q[1:]) / 100), None))
    st.subheader("百分位趋势 Percentiles over time")
    s = src.series(w, ctx.interval_s)
    rules = [(r.threshold, f"{r.title} {r.condition}") for q in (0.5, 0.95, 0.99)
             if (r := th.latency(prefix, q)) is not None]
    ui.line_chart(s, {f"{prefix}_p50": "P50", f"{prefix}_p95": "P95", f"{prefix}_p99": "P99"},
                  y_title=f"{label} (ms)", rules=rules)
    watched = "; ".join(f"{r.name}: {r.condition}" for r in th.rules.values() if r.metric) or "none enabled"
    st.caption(f"bucket: {ctx.interval_s // 60} min · latency alerts: {watched} (from {th.source})")
    st.subheader("分布 Histogram")
    h = src.histogram(w, field)
    h = h[h["count"] > 0] if (h["count"] > 0).any() else h
    h = h.assign(bucket=[f"{lo:,.0f}–{hi:,.0f}" if hi != float("inf") else f">{lo:,.0f}" for lo, hi in zip(h["lo_ms"], h["hi_ms"])])
    ui.bar_chart(h, "bucket:N", "count", x_title=f"{label} bucket (ms)", y_title="轮次 turns (count)",
                 sort=list(h["bucket"]))
    st.subheader("最慢的轮次 Slowest turns")
    slow = src.slowest(w, field, 20)
    st.dataframe(slow, hide_index=True, width="stretch",
                 column_config={"latency_ms": st.column_config.NumberColumn("latency (ms)", format="%.0f"),
                                "ttft_ms": st.column_config.NumberColumn("TTFT (ms)", format="%.0f"),
                                "cost_usd": st.column_config.NumberColumn("cost (USD)", format="%.6f")})


ui.run_page("延迟 Latency", render)
