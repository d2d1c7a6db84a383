"""Quality: completion rate by turn and by dialogue, feedback and refusals, by model_version."""
from __future__ import annotations

import streamlit as st

from dashboards import ui
from dashboards.data.base import Window


def render(ctx: ui.Ctx, w: Window) -> None:
    src = ctx.source
    k = src.kpis(w)
    th = ui.thresholds()
    c = st.columns(4)
    turn = ui.judged(k.completion_rate, th.turn, None)
    turn["help"] = ("completed chat turns / chat turns; completed = status completed and no thumbs-down on that turn"
                    + (f"; {turn['help']}" if turn.get("help") else ""))
    c[0].metric("轮次完成率 Turn completion", ui.fmt_pct(k.completion_rate), border=True, **turn)
    dial = ui.judged(k.dialogue_completion_rate, th.dialogue, None)
    dial["help"] = ("conversations that ended in the range on a completed turn / all that ended "
                    f"({ui.conversation_idle_s() / 60:g} min without a chat turn ends one)"
                    + (f"; {dial['help']}" if dial.get("help") else ""))
    c[1].metric("对话完成率 Dialogue completion", ui.fmt_pct(k.dialogue_completion_rate), border=True, **dial)
    c[2].metric("差评 Rated down", ui.fmt_int(k.rated_down), border=True)
    c[3].metric("拒答 Refused", ui.fmt_int(k.statuses.get("refused", 0)), border=True)

    st.subheader("完成率趋势 Completion over time")
    s = src.series(w, ctx.interval_s)
    if not s.empty:
        s = s.assign(turn_rate=(s["completed"] / s["chat_turns"].where(s["chat_turns"] > 0)) * 100,
                     dialogue_rate=(s["completed_dialogues"] / s["dialogues"].where(s["dialogues"] > 0)) * 100)
    rules = [(r.threshold * 100, f"{r.title} {r.condition}") for r in (th.dialogue, th.turn) if r is not None]
    ui.line_chart(s, {"turn_rate": "轮次 turn", "dialogue_rate": "对话 dialogue"}, y_title="完成率 completion (%)",
                  rules=rules, y_format=",.1f")
    st.caption(f"bucket: {ctx.interval_s // 60} min · dialogue completion counts a conversation in the bucket it "
               f"ended in · alert thresholds from {th.source}")

    st.subheader("按模型版本 By model_version")
    q = src.quality_by_model(w)
    if q.empty:
        st.info("没有数据 · no data")
        return
    q = q.assign(turn_completion=q["completed"] / q["turns"],
                 dialogue_completion=q["completed_dialogues"] / q["dialogues"].where(q["dialogues"] > 0))
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
