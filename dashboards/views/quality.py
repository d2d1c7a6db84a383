"""Quality: completion rate by turn and by dialogue, feedback and refusals, by model_version."""
from __future__ import annotations

import streamlit as st

from dashboards import ui
from dashboards.data.base import Window


def render(ctx: ui.Ctx, w: Window) -> None:
    src = ctx.source
    k = src.kpis(w)
    c = st.columns(4)
    c[0].metric("轮次完成率 Turn completion", ui.fmt_pct(k.completion_rate), border=True,
                help="completed turns / all turns; completed = status completed and no thumbs-down")
    c[1].metric("对话完成率 Dialogue completion", ui.fmt_pct(k.dialogue_completion_rate), border=True,
                help="dialogues whose every turn in the range completed / all dialogues")
    c[2].metric("差评 Rated down", ui.fmt_int(k.rated_down), border=True)
    c[3].metric("拒答 Refused", ui.fmt_int(k.statuses.get("refused", 0)), border=True)
    st.caption("threshold: completion rate < 90 % over 15 min")

    st.subheader("按模型版本 By model_version")
    q = src.quality_by_model(w)
    if q.empty:
        st.info("没有数据 · no data")
        return
    q = q.assign(turn_completion=q["completed"] / q["turns"],
                 dialogue_completion=q["completed_dialogues"] / q["sessions"].where(q["sessions"] > 0))
    st.dataframe(q, hide_index=True, width="stretch", column_config={
        "turn_completion": st.column_config.NumberColumn("turn completion", format="percent"),
        "dialogue_completion": st.column_config.NumberColumn("dialogue completion", format="percent")})
    left, right = st.columns(2)
    with left:
        st.markdown("**完成率 Completion rate by model (%)**")
        long = q.melt("model_version", ["turn_completion", "dialogue_completion"], var_name="kind", value_name="rate")
        long["rate"] = long["rate"] * 100
        ui.bar_chart(long, "model_version:N", "rate", x_title="model_version", y_title="完成率 completion (%)", color="kind",
                     grouped=True, horizontal=True, height=180)
    with right:
        st.markdown("**反馈与拒答 Feedback & refusals by model (turns)**")
        long = q.melt("model_version", ["rated_up", "rated_down", "refused", "failed"], var_name="kind", value_name="count")
        ui.bar_chart(long, "model_version:N", "count", x_title="model_version", y_title="轮次 turns (count)", color="kind",
                     grouped=True, horizontal=True, height=180)
    st.subheader("按轮次序号 By turn index")
    t = src.completion_by_turn(w)
    if not t.empty:
        t = t.assign(rate=t["completed"] / t["turns"] * 100, turn=t["turn_index"].map(lambda i: f"{i}" if i < 10 else "10+"))
        ui.bar_chart(t, "turn:N", "rate", x_title="轮次序号 turn_index (0 = first)", y_title="完成率 completion (%)",
                     sort=list(t["turn"]))
        st.dataframe(t[["turn", "turns", "completed"]], hide_index=True)


ui.run_page("质量 Quality", render)
