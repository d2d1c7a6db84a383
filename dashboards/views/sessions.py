"""Sessions: search and filter turns, open a whole conversation. Text shown is masked."""
from __future__ import annotations

import streamlit as st

from contracts.metrics import STATUSES
from dashboards import ui
from dashboards.data.base import Window


def render(ctx: ui.Ctx, w: Window) -> None:
    src = ctx.source
    c = st.columns([2, 2, 2, 2])
    ident = c[0].text_input("会话 / 请求 ID Session or request id", key="ses_id")
    text = c[1].text_input("文本搜索 Text contains", key="ses_text")
    models = c[2].multiselect("模型 model_version", src.models(w), key="ses_models")
    statuses = c[3].multiselect("状态 Status", list(STATUSES), key="ses_status")
    turns = src.search_turns(w, session=ident.strip(), text=text.strip(), models=models, statuses=statuses, limit=200)
    st.caption(f"{len(turns)} turn(s) shown (newest first, at most 200)")
    if turns.empty:
        st.info("没有匹配的轮次 · no matching turns")
        return
    shown = turns.assign(prompt=turns["prompt"].map(ui.masked), response=turns["response"].map(ui.masked))
    st.dataframe(shown, hide_index=True, width="stretch", column_config={
        "latency_ms": st.column_config.NumberColumn("latency (ms)", format="%.0f"),
        "ttft_ms": st.column_config.NumberColumn("TTFT (ms)", format="%.0f")})
    sessions = list(dict.fromkeys(turns["session_id"]))
    sid = st.selectbox("打开会话 Open conversation", sessions, key="ses_open")
    if sid:
        conv = src.conversation(sid)
        st.subheader(f"会话 {sid} · {len(conv)} turn(s)")
        for _, t in conv.iterrows():
            with st.chat_message("user"):
                st.text(ui.masked(t["prompt"]))
            with st.chat_message("assistant"):
                st.text(ui.masked(t["response"]) or "(no content)")
                st.caption(f"{t['request_id']} · {t['status']} · {t['model_version']} · "
                           f"{ui.fmt_ms(t['latency_ms'])} · TTFT {ui.fmt_ms(t['ttft_ms'])} · "
                           f"{int(t['input_tokens'])}→{int(t['output_tokens'])} tokens")


ui.run_page("会话 Sessions", render)
