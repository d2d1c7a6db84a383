"""seekwatch ops dashboard: the Streamlit entry point (``seekwatch dashboard`` runs this).

One file per page under ``dashboards/views/``; the sidebar (time range, auto-refresh) is
rendered here, once, so its state is shared by every page.
"""
from __future__ import annotations



import streamlit as st

from dashboards import auth, ui


st.set_page_config(page_title="seekwatch · DeepSeek 运维看板", page_icon=":material/monitoring:", layout="wide")
if not auth.gate():  # login (dashboards/auth.py): nothing below renders without it
    st.stop()
PAGES = [
    st.Page("views/overview.py", title="概览 Overview", icon=":material/dashboard:", default=True, url_path="overview"),
    st.Page("views/latency.py", title="延迟 Latency", icon=":material/timer:", url_path="latency"),
    st.Page("views/quality.py", title="质量 Quality", icon=":material/task_alt:", url_path="quality"),
    st.Page("views/cost.py", title="成本 Cost", icon=":material/payments:", url_path="cost"),
    st.Page("views/gpu.py", title="GPU", icon=":material/memory:", url_path="gpu"),
    st.Page("views/alerts.py", title="告警 Alerts", icon=":material/notifications_active:", url_path="alerts"),
    st.Page("views/sessions.py", title="会话 Sessions", icon=":material/forum:", url_path="sessions"),
]
nav = st.navigation(PAGES)
ui.sidebar()
nav.run()
