"""Bilingual (Chinese + English) alert text shared by every receiver.

Each alert reads: the rule, the value against its threshold, the node (and GPU), since when,
and a link to the dashboard. Markdown differs a little per chat tool: each receiver passes
its own :class:`MarkdownStyle` to ``markdown(payload, style)``, or uses ``plain(payload)``.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any, Callable

from .durations import format_duration, human

RULE_TITLES = {
    "p99_latency": ("P99 延迟过高", "P99 latency high"),
    "p99_e2e_latency": ("端到端 P99 延迟过高", "End-to-end P99 latency high"),
    "gpu_utilization": ("GPU 利用率过高", "GPU utilization high"),
    "completion_rate": ("对话完成率过低", "Dialogue completion rate low"),
    "turn_completion": ("轮次完成率过低", "Turn completion rate low"),
    "no_data": ("节点无数据", "No data from node"),
    "scaling": ("扩缩容建议", "Scaling recommendation"),
}
SEVERITY = {"critical": ("严重", "🔴"), "warning": ("警告", "🟠"), "info": ("提示", "🔵")}


def ts(t: float | None) -> str:
    if not t:
        return "-"
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(t: float | None) -> str:
    if not t:
        return "0001-01-01T00:00:00Z"
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fmt_value(rule: str, v: Any) -> str:
    if v is None:
        return "n/a"
    if rule in ("p99_latency", "p99_e2e_latency"):
        return f"{v * 1000:.0f} ms"
    if rule in ("gpu_utilization", "completion_rate", "turn_completion"):
        return f"{v * 100:.1f}%"
    if rule == "scaling":
        return f"{v:.2f}"
    return f"{v:g}"


def comparison(a: dict[str, Any]) -> tuple[str, str]:
    """(中文, English) description of value vs threshold for one alert."""
    rule = a["labels"].get("rule", "")
    d = a.get("detail") or {}
    v, thr = a.get("value"), a.get("threshold")
    fv, ft = _fmt_value(rule, v), _fmt_value(rule, thr)
    if rule in ("p99_latency", "p99_e2e_latency"):
        name = "首字延迟 TTFT" if d.get("metric", "ttft") == "ttft" else "端到端延迟"
        en = "time to first token" if d.get("metric", "ttft") == "ttft" else "end-to-end latency"
        q = f"P{float(d.get('quantile', 0.99)) * 100:g}"
        w = format_duration(float(d.get("window", 0)))
        return (f"{w} 内{name} {q} = {fv}，阈值 > {ft}", f"{q} {en} over {w} = {fv}, threshold > {ft}")
    if rule == "gpu_utilization":
        w = format_duration(float(d.get("window", 0)))
        return (f"{w} 平均利用率 {fv}，阈值 > {ft}", f"average utilization over {w} = {fv}, threshold > {ft}")
    if rule == "completion_rate":
        w = format_duration(float(d.get("window", 0)))
        n = d.get("ended")
        extra_zh = f"（结束 {n:.0f} 个对话，完成 {d.get('completed', 0):.0f} 个）" if n is not None else ""
        extra_en = f" ({n:.0f} conversations ended, {d.get('completed', 0):.0f} completed)" if n is not None else ""
        return (f"{w} 内结束的对话中对话完成率 {fv}，阈值 < {ft}{extra_zh}",
                f"dialogue completion (per conversation) over {w} = {fv}, threshold < {ft}{extra_en}")
    if rule == "turn_completion":
        w = format_duration(float(d.get("window", 0)))
        tot = d.get("total")
        extra_zh = f"（{tot:.0f} 轮，完成 {d.get('completed', 0):.0f}，其中差评 {d.get('down', 0):.0f}）" if tot is not None else ""
        extra_en = (f" ({tot:.0f} turns, {d.get('completed', 0):.0f} completed, {d.get('down', 0):.0f} of them "
                    f"thumbs-down)") if tot is not None else ""
        return (f"{w} 轮次完成率 {fv}，阈值 < {ft}{extra_zh}",
                f"turn completion (per chat turn) over {w} = {fv}, threshold < {ft}{extra_en}")
    if rule == "no_data":
        err = d.get("error") or "no samples"
        return (f"无法获取指标：{err}", f"no metrics: {err}")
    if rule == "scaling":
        n = d.get("instances", 0)
        w = format_duration(float(d.get("window", 0)))
        if a["labels"].get("direction") == "up":
            return (f"{w} 平均负载 {fv} > {ft}，建议扩容 +{n} 个实例",
                    f"average load over {w} = {fv} > {ft}: add {n} instance(s)")
        return (f"{w} 平均负载 {fv} < {ft}，建议缩容 {n} 个实例",
                f"average load over {w} = {fv} < {ft}: remove {-n} instance(s)")
    return (f"{fv} / {ft}", f"{fv} / {ft}")


def title(payload: dict[str, Any]) -> str:
    alerts = payload["alerts"]
    a = alerts[0]
    rule = a["labels"].get("rule", "")
    zh, en = RULE_TITLES.get(rule, (rule, rule))
    if len({x["labels"].get("rule") for x in alerts}) > 1:
        zh, en = f"{len(alerts)} 条告警", f"{len(alerts)} alerts"
    order = ["critical", "warning", "info"]
    sev = min((x["labels"].get("severity", "warning") for x in alerts),
              key=lambda v: order.index(v) if v in order else len(order))
    if payload["status"] == "resolved":
        head = f"✅ [已恢复 RESOLVED] {zh} / {en}"
    else:
        sz, icon = SEVERITY.get(sev, (sev, "⚠️"))
        head = f"{icon} [{sz} {sev.upper()}] {zh} / {en}"
    if len(alerts) > 1 and len({x["labels"].get("rule") for x in alerts}) == 1:
        head += f" ×{len(alerts)}"
    return head


def alert_lines(a: dict[str, Any], status: str, with_rule: bool = False) -> list[str]:
    lab = a["labels"]
    zh, en = comparison(a)
    node = lab.get("node", "?")
    if lab.get("gpu"):
        node += f" · GPU {lab['gpu']}"
    lines = [f"节点 Node: {node}", f"当前 Value: {zh}", f"Value: {en}"]
    if with_rule:
        rz, re_ = RULE_TITLES.get(lab.get("rule", ""), (lab.get("rule", ""), lab.get("rule", "")))
        lines.insert(0, f"规则 Rule: {rz} / {re_} ({lab.get('severity', '')})")
    since = a.get("starts_at")
    if status == "resolved":
        end = a.get("ends_at")
        dur = human(end - since) if end and since else "-"
        lines.append(f"开始 Since: {ts(since)} · 恢复 Resolved: {ts(end)}（持续 lasted {dur}）")
    else:
        lines.append(f"开始于 Since: {ts(since)}" + ("（重复提醒 repeat）" if a.get("repeat") else ""))
    return lines


def plain(payload: dict[str, Any]) -> str:
    out = [title(payload)]
    mixed = len({x["labels"].get("rule") for x in payload["alerts"]}) > 1
    for a in payload["alerts"]:
        lines = alert_lines(a, payload["status"], with_rule=mixed)
        out += ["", *lines] if len(payload["alerts"]) > 1 else lines
    if payload.get("dashboard_url"):
        out.append(f"仪表盘 Dashboard: {payload['dashboard_url']}")
    return "\n".join(out)


@dataclass(frozen=True)
class MarkdownStyle:
    """How one chat tool writes markdown; each receiver module declares its own (Slack's
    mrkdwn, DingTalk's heading, WeCom's quoted lines), the default is CommonMark."""

    bold: Callable[[str], str] = lambda s: f"**{s}**"
    #: the title line; None: the title in bold
    heading: Callable[[str], str] | None = None
    #: one "key: value" line; None: the key in bold
    line: Callable[[str, str], str] | None = None
    link: Callable[[str, str], str] = lambda url, text: f"[{text}]({url})"
    separator: str = "\n"


COMMONMARK = MarkdownStyle()


def markdown(payload: dict[str, Any], style: MarkdownStyle = COMMONMARK) -> str:
    """The markdown body of a notification, in ``style``."""
    bold = style.bold
    head = title(payload)
    out = [style.heading(head) if style.heading else bold(head)]
    mixed = len({x["labels"].get("rule") for x in payload["alerts"]}) > 1
    for a in payload["alerts"]:
        lines = alert_lines(a, payload["status"], with_rule=mixed)
        if len(payload["alerts"]) > 1:
            out.append("")
        for ln in lines:
            k, _, v = ln.partition(": ")
            out.append(style.line(k, v) if style.line else f"{bold(k)}: {v}")
    url = payload.get("dashboard_url")
    if url:
        out.append(style.link(url, "仪表盘 Dashboard"))
    return style.separator.join(out)
