"""Shared by every page: configuration (from the environment `seekwatch dashboard` sets),
cached data sources, the sidebar (time range, auto-refresh), number formats and charts.

Configuration (environment variables; ``seekwatch dashboard`` sets them from its flags):
``SEEKWATCH_DASHBOARD_LOGS`` (JSON-lines log dir), ``SEEKWATCH_DASHBOARD_URL`` (log store,
wins over LOGS), ``SEEKWATCH_DASHBOARD_INDEX`` (default ``seekwatch-*``), ``SEEKWATCH_DASHBOARD_HOST_NAME`` (only
the log store's records of one ``host.name``), ``SEEKWATCH_DASHBOARD_CA_CERTS`` /
``SEEKWATCH_DASHBOARD_INSECURE`` (the store's TLS; its auth comes from ``$SEEKWATCH_ES_*``),
``SEEKWATCH_DASHBOARD_PROMETHEUS`` / ``SEEKWATCH_DASHBOARD_NODE`` (GPU series),
``SEEKWATCH_DASHBOARD_ALERTS_DB`` (alertd's SQLite state), ``SEEKWATCH_COST_CONFIG`` (cost
YAML), ``SEEKWATCH_DASHBOARD_NOW`` (pin "now" to an ISO time: reproducible views and tests),
``SEEKWATCH_DASHBOARD_CACHE`` (parse cache root, or ``off``), ``SEEKWATCH_DASHBOARD_ALERTS_CONFIG``
(alertd config whose thresholds mark cards and charts), ``SEEKWATCH_DASHBOARD_CONVERSATION_IDLE``
(seconds; when a conversation has ended).
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

import altair as alt
import pandas as pd
import streamlit as st

from contracts.pii import mask
from dashboards.data.base import Window, pick_interval

DEFAULT_LOG_DIR = "var/log"  # the node's default --log-dir
RANGES: dict[str, int] = {"15 min": 900, "1 h": 3600, "6 h": 6 * 3600, "24 h": 86400, "7 d": 7 * 86400, "30 d": 30 * 86400}
DEFAULT_RANGE = "24 h"
CUSTOM = "自定义 custom days"
REFRESH: dict[str, int | None] = {"off": None, "10 s": 10, "30 s": 30, "1 min": 60, "5 min": 300}
FONT = "Noto Sans CJK SC, Noto Sans SC, PingFang SC, Microsoft YaHei, sans-serif"
TIME_TITLE = "时间 time (UTC)"
_log = logging.getLogger("seekwatch.dashboard")


# ---------------------------------------------------------------------------- config & sources
def env(name: str, default: str | None = None) -> str | None:
    v = os.environ.get(f"SEEKWATCH_DASHBOARD_{name}")
    return v if v else default


def now() -> dt.datetime:
    pinned = env("NOW")
    if pinned:
        t = dt.datetime.fromisoformat(pinned.replace("Z", "+00:00"))
        return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def conversation_idle_s() -> float:
    from contracts.signals import DEFAULT_CONVERSATION_IDLE_S

    return float(env("CONVERSATION_IDLE") or DEFAULT_CONVERSATION_IDLE_S)


@st.cache_resource(show_spinner=False)
def _log_source(kind: str, target: str, index: str, host_name: str = "", ca_certs: str = "", insecure: bool = False,
                idle_s: float = 300.0):
    if kind == "logstore":
        from contracts.logstore import StoreClient
        from dashboards.data.logstore import LogStoreSource

        client = StoreClient(target, ca_certs=ca_certs or None, verify=not insecure)
        return LogStoreSource(client, index=index, where={"host.name": host_name} if host_name else None,
                              conversation_idle_s=idle_s)
    from dashboards.data.jsonl import JsonlSource

    return JsonlSource(target, cache_dir=parse_cache_dir(target), conversation_idle_s=idle_s)


def parse_cache_dir(log_dir: str) -> str | None:
    """Where parsed rows of settled log files are cached (``SEEKWATCH_DASHBOARD_CACHE``;
    ``off`` disables; default ``~/.cache/seekwatch/dashboard/<hash of the log dir>``)."""
    import hashlib

    root = env("CACHE")
    if root == "off":
        return None
    root = root or os.path.join(os.path.expanduser("~"), ".cache", "seekwatch", "dashboard")
    return os.path.join(root, hashlib.sha1(os.path.abspath(log_dir).encode()).hexdigest()[:16])


@st.cache_resource(show_spinner=False)
def _gpu_source(kind: str, target: str):
    from dashboards.data import gpu

    return gpu.PrometheusGpu(target) if kind == "prometheus" else gpu.NodeMetricsGpu(target)


@st.cache_resource(show_spinner=False)
def _cost_model(path: str | None):
    from contracts.cost import CostModel

    return CostModel.load(path)


@st.cache_resource(show_spinner=False)
def _thresholds(path: str | None):
    from dashboards.data.thresholds import Thresholds

    return Thresholds.load(path)


def thresholds():
    """The alert rules' thresholds (the given alert config over the built-in matrix)."""
    return _thresholds(env("ALERTS_CONFIG"))


def log_source():
    url = env("URL")
    if url:
        return _log_source("logstore", url, env("INDEX", "seekwatch-*"), env("HOST_NAME", ""), env("CA_CERTS", ""),
                           env("INSECURE") == "1", conversation_idle_s())
    return _log_source("jsonl", os.path.abspath(env("LOGS", DEFAULT_LOG_DIR)), "", idle_s=conversation_idle_s())


def gpu_source():
    if env("PROMETHEUS"):
        return _gpu_source("prometheus", env("PROMETHEUS"))
    if env("NODE"):
        return _gpu_source("node", env("NODE"))
    return None


def cost_model():
    return _cost_model(os.environ.get("SEEKWATCH_COST_CONFIG") or None)


# ---------------------------------------------------------------------------- context & sidebar
@dataclass
class Ctx:
    range_label: str
    refresh_s: int | None
    #: (first day, last day) for the "custom" range, whole UTC days
    days: tuple[dt.date, dt.date] | None = None

    @property
    def source(self):
        return log_source()

    def window(self) -> Window:
        if self.range_label == CUSTOM and self.days:
            start = dt.datetime.combine(self.days[0], dt.time(), dt.timezone.utc)
            end = dt.datetime.combine(self.days[1], dt.time(), dt.timezone.utc) + dt.timedelta(days=1)
            return Window(start, min(end, now()) if start < now() else end)
        end = now()
        return Window(end - dt.timedelta(seconds=RANGES.get(self.range_label, 86400)), end)

    @property
    def interval_s(self) -> int:
        return pick_interval(self.window().seconds)


_run = threading.local()


def sidebar() -> Ctx:
    """The shared controls; rendered once per run (by app.py, or by a page run on its own)."""
    ctx = getattr(_run, "ctx", None)
    if ctx is not None:
        return ctx
    with st.sidebar:
        st.markdown("### seekwatch · DeepSeek 运维")
        label = st.selectbox("时间范围 Time range", [*RANGES, CUSTOM], index=list(RANGES).index(DEFAULT_RANGE),
                             key="sw_range")
        days = None
        if label == CUSTOM:
            today = now().date()
            picked = st.date_input("日期 Days (UTC)", (today - dt.timedelta(days=6), today), key="sw_days")
            if isinstance(picked, (tuple, list)) and len(picked) == 2:
                days = (picked[0], picked[1])
            elif isinstance(picked, (tuple, list)) and len(picked) == 1:
                days = (picked[0], picked[0])
        ref = st.selectbox("自动刷新 Auto-refresh", list(REFRESH), index=0, key="sw_refresh")
        st.button("刷新 Refresh now", key="sw_refresh_now")
        try:
            st.caption(log_source().describe())
        except Exception as exc:  # noqa: BLE001
            st.caption(f"log source: {exc}")
        g = gpu_source()
        st.caption(g.describe() if g else "GPU: no --prometheus/--node given")
        st.caption(f"now: {now():%Y-%m-%d %H:%M:%S} UTC")
    ctx = Ctx(label, REFRESH[ref], days)
    _run.ctx = ctx
    return ctx


def run_page(title: str, render: Callable[[Ctx, Window], None]) -> None:
    """Render a page: title, then ``render(ctx, window)`` — inside a fragment that reruns every
    ``refresh_s`` seconds when auto-refresh is on (re-reading new log lines each time)."""
    ctx = sidebar()
    _run.ctx = None  # the next script run renders the sidebar again
    st.title(title)

    def body():
        src = ctx.source
        if hasattr(src, "refresh"):
            src.refresh()
        render(ctx, ctx.window())

    if ctx.refresh_s:
        st.fragment(run_every=ctx.refresh_s)(body)()
    else:
        body()


# ---------------------------------------------------------------------------- formats
def _bad(v: Any) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v))


def fmt_int(v: Any) -> str:
    return "—" if _bad(v) else f"{int(round(v)):,}"


def fmt_ms(v: Any) -> str:
    return "—" if _bad(v) else f"{v:,.0f} ms"


def fmt_pct(v: Any) -> str:
    return "—" if _bad(v) else f"{v * 100:.1f} %"


def fmt_pp(v: Any) -> str:
    """A difference of two rates, in percentage points."""
    return "—" if _bad(v) else f"{v * 100:.1f} pp"


def fmt_usd(v: Any) -> str:
    if _bad(v):
        return "—"
    return f"${v:,.2f}" if abs(v) >= 1 else f"${v:.4f}"


def fmt_rate(v: Any) -> str:
    return "—" if _bad(v) else f"{v:,.1f} tok/s"


def delta(cur: Any, prev: Any, fmt: Callable[[Any], str]) -> str | None:
    if _bad(cur) or _bad(prev):
        return None
    d = cur - prev
    s = fmt(abs(d))
    return ("+" if d >= 0 else "-") + s


def judged(value: Any, rule, period_delta: str | None) -> dict[str, Any]:
    """``delta`` / ``delta_color`` / ``help`` for a card an alert rule watches.

    Colour says whether the alert's condition holds, never which way the number moved: over
    (or under) the rule's threshold the delta names the rule, in red; otherwise it is the
    change against the previous period, in grey. ``value`` is in the rule's unit (ms for a
    latency, a ratio for a completion rate).
    """
    if rule is None:
        return {"delta": period_delta, "delta_color": "off"}
    note = f"alert {rule.name}: {rule.title}, {rule.condition}"
    if rule.breached(None if _bad(value) else float(value)):
        # st.metric colours by the delta's sign: "-" + normal and "+" + inverse are both red.
        # Short enough for a quarter-width card: the rule's Chinese title and its condition;
        # the bilingual title is in the card's help.
        zh = rule.title.split(" / ")[0]
        cond = rule.condition.split(" ", 1)[1] if rule.condition.startswith("P") else rule.condition
        text = f"{'-' if rule.below else '+'} {zh} {cond}"
        return {"delta": text, "delta_color": "normal" if rule.below else "inverse",
                "help": f"breaches the alert threshold: {note}"}
    return {"delta": period_delta, "delta_color": "off", "help": f"within the alert threshold ({note})"}


# ---------------------------------------------------------------------------- charts (Altair)
def _finish(chart: alt.Chart) -> alt.Chart:
    return chart.configure(font=FONT).configure_axis(labelFont=FONT, titleFont=FONT).configure_legend(
        labelFont=FONT, titleFont=FONT)


def line_chart(df: pd.DataFrame, columns: dict[str, str], y_title: str, height: int = 260,
               rules: list[tuple[float, str]] | None = None, y_format: str = ",.2f") -> None:
    """Lines of ``columns`` (column -> legend name) over ``time``; units go in ``y_title``.
    ``rules``: (y, label) of alert thresholds, drawn as dashed red lines with their label."""
    if df.empty:
        st.info("该时间范围内没有数据 · no data in this time range")
        return
    long = df[["time", *columns]].rename(columns=columns).melt("time", var_name="series", value_name="value")
    ch = alt.Chart(long).mark_line(point=len(df) < 40).encode(
        x=alt.X("time:T", title=TIME_TITLE),
        y=alt.Y("value:Q", title=y_title, axis=alt.Axis(format=y_format)),
        color=alt.Color("series:N", title=None),
        tooltip=[alt.Tooltip("time:T", format="%Y-%m-%d %H:%M"), "series:N", alt.Tooltip("value:Q", format=y_format)],
    ).properties(height=height)
    layers = [ch]
    for y, label in rules or []:
        # value and label as constants in the spec, so they are part of what the chart says
        one = alt.Chart(pd.DataFrame({"_": [0]}))
        layers.append(one.mark_rule(color="#d62728", strokeDash=[6, 4], size=1.5).encode(y=alt.datum(float(y))))
        layers.append(one.mark_text(color="#d62728", align="left", baseline="bottom", dx=4, dy=-2).encode(
            y=alt.datum(float(y)), x=alt.value(0), text=alt.value(label)))
    if len(layers) > 1:
        ch = alt.layer(*layers)
    st.altair_chart(_finish(ch), width="stretch")


def bar_chart(df: pd.DataFrame, x: str, y: str, x_title: str, y_title: str, color: str | None = None,
              sort: Any = None, height: int = 260, horizontal: bool = False, grouped: bool = False) -> None:
    """Bars of ``y`` per ``x``; ``horizontal`` for long category names; ``grouped`` puts the
    ``color`` series side by side (rates must not be stacked)."""
    if df.empty:
        st.info("没有数据 · no data")
        return
    axis = alt.Axis(labelAngle=0, labelLimit=260) if horizontal else alt.Axis(labelAngle=-30, labelLimit=200)
    if horizontal:
        # every band gets room for its label and a visible bar, whatever ``height`` says: a
        # fixed height smaller than the bands (or than the axis title) squeezes bars into lines
        # and prints neighbouring labels on top of each other
        bands = df[x.split(":")[0]].nunique() * (df[color].nunique() if color and grouped else 1)
        height = max(height, 28 * bands + 60, 9 * len(x_title) + 20)
    xe = alt.X(f"{x}", title=x_title, sort=sort, axis=axis)
    ye = alt.Y(f"{y}:Q", title=y_title)
    if horizontal:
        enc = dict(y=alt.Y(f"{x}", title=x_title, sort=sort, axis=axis), x=alt.X(f"{y}:Q", title=y_title))
    else:
        enc = dict(x=xe, y=ye)
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=None)
        if grouped:
            enc["yOffset" if horizontal else "xOffset"] = alt.XOffset(f"{color}:N") if not horizontal else alt.YOffset(f"{color}:N")
    ch = alt.Chart(df).mark_bar().encode(**enc, tooltip=list(df.columns)).properties(height=height)
    st.altair_chart(_finish(ch), width="stretch")


#: Shown in place of a text the masker failed on: the dashboard fails closed.
MASK_FAILED = "[hidden: the PII masker failed on this text]"


def masked(text: Any) -> str:
    """Defence in depth: logs are masked by the node, and the dashboard masks again before
    showing any text (idempotent), so text from another writer cannot leak personal data.
    The masker is a hard dependency (an import error stops the page); if a rule fails on one
    text, that text is hidden, never shown unmasked."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    try:
        return mask(str(text)).text
    except Exception:  # noqa: BLE001 - any failure of a rule hides the text
        _log.exception("PII masker failed; text hidden")
        return MASK_FAILED
