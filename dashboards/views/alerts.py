"""Alerts: what is firing now, and the history, from alertd's state file."""
from __future__ import annotations

import streamlit as st

from dashboards import ui
from dashboards.data import alerts as alert_data
from dashboards.data.base import Window


def render(ctx: ui.Ctx, w: Window) -> None:
    got = alert_data.read_alerts(ui.env("ALERTS_DB"))
    st.caption(f"source: {got['how']}")
    if got["error"]:
        st.warning(got["error"])
    st.metric("触发中 Firing", ui.fmt_int(len(got["firing"])), border=True)
    st.subheader("触发中 Firing now")
    if got["firing"].empty:
        st.success("无告警 · nothing firing")
    else:
        st.dataframe(got["firing"], hide_index=True, width="stretch")
    st.subheader("历史 History")
    if got["history"].empty:
        st.info("没有历史记录 · no history")
    else:
        st.dataframe(got["history"], hide_index=True, width="stretch")


ui.run_page("告警 Alerts", render)
