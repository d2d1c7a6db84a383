"""Cost: per 1k tokens, per session, per completed dialogue, per day; monthly projection; the
three deployment modes (on-premises, cloud on-demand, reserved) at the current volume; hosted API prices; the scaling rule."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import ui
from dashboards.data.base import Window
from contracts.cost import Volume


def render(ctx: ui.Ctx, w: Window) -> None:
    src, model = ctx.source, ui.cost_model()
    k = src.kpis(w)
    v = Volume(seconds=w.seconds, turns=k.requests, sessions=k.sessions, completed_dialogues=k.completed_dialogues,
               input_tokens=k.input_tokens, output_tokens=k.output_tokens, allocated_usd=k.cost_usd)
    s = model.summarize(v)
    st.caption(f"deployment: **{model.mode.label}** · {model.instances} instance(s) × {model.gpu_count} GPU · "
               f"${model.mode.monthly_usd:,.0f}/month per instance · config: {model.source}")
    c = st.columns(4)
    c[0].metric("每千 token 成本 Cost / 1k tokens", ui.fmt_usd(s["cost_per_1k_tokens_usd"]), border=True,
                help="fixed cost of the range / tokens (input + output) × 1000")
    c[1].metric("每会话成本 Cost / session", ui.fmt_usd(s["cost_per_session_usd"]), border=True)
    c[2].metric("每完成对话成本 Cost / completed dialogue", ui.fmt_usd(s["cost_per_completed_dialogue_usd"]), border=True)
    c[3].metric("每日成本 Cost / day", ui.fmt_usd(s["cost_per_day_usd"]), border=True)
    c = st.columns(4)
    c[0].metric("月度预测 Monthly projection", ui.fmt_usd(s["monthly_projection_usd"]), border=True)
    c[1].metric("范围内成本 Cost of range", ui.fmt_usd(s["period_cost_usd"]), border=True)
    c[2].metric("已用容量成本 Used (Σ cost_usd)", ui.fmt_usd(s["allocated_usd"]), border=True,
                help="sum of the turns' cost_usd: the share of capacity the turns held (slot-seconds)")
    c[3].metric("容量使用率 Capacity used", ui.fmt_pct(s["capacity_used_ratio"]), border=True)
    st.caption(f"monthly volume at this rate: {s['monthly_tokens_projection'] / 1e6:,.2f} M tokens, "
               f"{s['monthly_turns_projection']:,.0f} turns")

    st.subheader("部署方式对比 Deployment modes at the current volume")
    modes = pd.DataFrame(model.mode_comparison(v))
    st.dataframe(modes, hide_index=True, width="stretch", column_config={
        "monthly_usd": st.column_config.NumberColumn("monthly (USD)", format="$%.2f"),
        "cost_per_day_usd": st.column_config.NumberColumn("per day (USD)", format="$%.2f"),
        "cost_per_1k_tokens_usd": st.column_config.NumberColumn("per 1k tokens (USD)", format="$%.6f"),
        "delta_vs_current_usd": st.column_config.NumberColumn("Δ vs current (USD/month)", format="$%.2f"),
        "latency_ms": st.column_config.NumberColumn("latency (ms)", format="%d")})
    ui.bar_chart(modes, "label:N", "monthly_usd", x_title="方式 mode", y_title="月成本 monthly cost (USD)",
                 sort="-x", horizontal=True)
    st.subheader("与 API 价格对比 Versus hosted API prices (same monthly tokens)")
    api = pd.DataFrame(model.api_comparison(v))
    if not api.empty:
        st.dataframe(api, hide_index=True, width="stretch", column_config={
            "monthly_usd": st.column_config.NumberColumn("monthly (USD)", format="$%.2f"),
            "cost_per_1k_tokens_usd": st.column_config.NumberColumn("per 1k tokens (USD)", format="$%.6f"),
            "delta_vs_current_usd": st.column_config.NumberColumn("Δ vs self-hosted (USD/month)", format="$%.2f")})
        both = pd.concat([modes[["label", "monthly_usd"]].rename(columns={"label": "option"}),
                          api[["api", "monthly_usd"]].rename(columns={"api": "option"})], ignore_index=True)
        ui.bar_chart(both, "option:N", "monthly_usd", x_title="方案 option", y_title="月成本 monthly cost (USD)", sort="-x",
                     horizontal=True)

    st.subheader("按请求类型 By request kind")
    kinds = src.cost_by_kind(w)
    if kinds.empty:
        st.info("没有数据 · no data")
    else:
        total = float(kinds["cost_usd"].sum())
        kinds = kinds.assign(share=kinds["cost_usd"] / total if total else 0.0,
                             range_cost_usd=(kinds["cost_usd"] / total if total else 0.0) * s["period_cost_usd"])
        st.dataframe(kinds, hide_index=True, width="stretch", column_config={
            "request_kind": st.column_config.TextColumn("kind"),
            "cost_usd": st.column_config.NumberColumn("Σ cost_usd (USD)", format="$%.4f"),
            "share": st.column_config.NumberColumn("share of used capacity", format="percent"),
            "range_cost_usd": st.column_config.NumberColumn("share of the range's cost (USD)", format="$%.2f")})
        ui.bar_chart(kinds, "request_kind:N", "cost_usd", x_title="类型 kind", y_title="Σ cost_usd (USD)", sort="-x",
                     horizontal=True)
        st.caption("chat = the user's turns; title / summary = NextChat's background requests (a record without "
                   "request_kind is a chat turn). Cost of the range split by each kind's share of Σ cost_usd.")

    st.subheader("扩缩容建议 Scaling recommendation (load > 0.8 → +2, < 0.3 → −1)")
    ser = src.series(w, ctx.interval_s)
    if ser.empty:
        st.info("没有数据 · no data")
        return
    load = ser["busy_s"] / (ctx.interval_s * model.instances * model.concurrency)
    rec = ser.assign(load=load, recommendation=[model.scaling_delta(x) for x in load],
                     instances=[model.recommended_instances(x) for x in load])
    ui.line_chart(rec.assign(load_pct=rec["load"] * 100), {"load_pct": "load (%)"}, y_title="负载 load (%)")
    st.caption(f"load = busy slot-seconds / (bucket × {model.instances} instance(s) × {model.concurrency} slots); "
               f"bucket {ctx.interval_s // 60} min; thresholds {model.scale_low:.0%} / {model.scale_high:.0%}")
    last = rec.iloc[-1]
    st.metric("当前建议 Recommendation now", f"{int(last['instances'])} instance(s)",
              f"{int(last['recommendation']):+d} (load {last['load'] * 100:.1f} %)", delta_color="off", border=True)
    st.dataframe(rec[["time", "requests", "busy_s", "load", "recommendation", "instances"]].tail(24), hide_index=True,
                 width="stretch")


ui.run_page("成本 Cost", render)
