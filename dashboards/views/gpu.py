"""GPU: utilization, memory, temperature and power per GPU, from Prometheus or node /metrics."""
from __future__ import annotations

import streamlit as st

from dashboards import ui
from dashboards.data.base import Window
from dashboards.data.gpu import GPU_METRICS
from contracts import metrics as M


def render(ctx: ui.Ctx, w: Window) -> None:
    g = ui.gpu_source()
    if g is None:
        st.info("没有 GPU 数据源 · no GPU source: start with `--prometheus URL` or `--node URL`.")
        return
    st.caption(g.describe())
    avail = g.available()
    if avail is False:
        st.warning("节点上没有 GPU · the node reports no GPU (seekwatch_gpu_available 0): no series to show.")
        return
    try:
        df = g.series(w.start.timestamp(), w.end.timestamp(), ctx.interval_s)
    except Exception as exc:  # noqa: BLE001
        st.error(f"GPU source error: {exc}")
        return
    if df.empty:
        st.info("该时间范围内没有 GPU 样本 · no GPU samples in this range")
        return
    for metric in (M.GPU_UTILIZATION, M.GPU_MEMORY_USED, M.GPU_TEMPERATURE, M.GPU_POWER):
        title, unit, scale = GPU_METRICS[metric]
        d = df[df["metric"] == metric]
        if d.empty:
            continue
        wide = d.assign(value=d["value"] * scale).pivot_table(index="time", columns="gpu", values="value").reset_index()
        wide.columns = ["time", *[f"GPU {c}" for c in wide.columns[1:]]]
        latest = wide.iloc[-1, 1:].mean()
        st.metric(f"{title} (latest, mean)", f"{latest:,.1f} {unit}", border=True)
        ui.line_chart(wide, {c: c for c in wide.columns[1:]}, y_title=f"{title} ({unit})", height=220)
    st.caption("alert threshold: GPU utilization > 90 % for 5 min, per GPU")


ui.run_page("GPU", render)
