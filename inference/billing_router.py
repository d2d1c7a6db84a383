"""NextChat's balance query, answered from the cost model.

NextChat's settings page asks ``/dashboard/billing/subscription`` for the budget
(``hard_limit_usd``) and ``/dashboard/billing/usage`` for what was spent (``total_usage``, in
cents). Spend is the sum of ``cost_usd`` over the node's own session log in the date range,
so it survives restarts and agrees with the dashboard: the same files (the one tailer of
:mod:`contracts.logtail`, rotated ``*.jsonl.N`` included, and a file rotated to another name
read to its end through the handle kept), the same rule for what a turn is
(:func:`contracts.log_schema.is_turn_record`), each turn once by ``request_id``.

A query does not rescan the log: :class:`SpendLedger` keeps a sum per UTC day and reads only
the bytes appended since the previous query. Its memory is the set of request ids seen (for
the de-duplication) plus one number per day; the spend of a file deleted later (retention)
stays counted until the node restarts.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Request

from contracts.cost import CostModel
from contracts.log_schema import is_turn_record
from contracts.logtail import LogTailer, TailedFile
from inference.http_errors import InvalidRequest

router = APIRouter()


def subscription_body(cost: CostModel) -> dict[str, Any]:
    """Body of ``GET /dashboard/billing/subscription`` (OpenAI's legacy billing shape).

    NextChat reads ``hard_limit_usd`` (dollars) as the balance's total.
    """
    budget = round(cost.budget_usd(), 2)
    return {
        "object": "billing_subscription",
        "has_payment_method": True,
        "soft_limit_usd": round(budget * 0.8, 2),  # a warning level: 80 % of the budget
        "hard_limit_usd": budget,
        "system_hard_limit_usd": budget,
        "access_until": 0,
        "plan": {"id": f"seekwatch-{cost.deployment}", "title": f"seekwatch self-hosted ({cost.mode.label or cost.deployment})"},
    }


def usage_body(total_cost_usd: float, start_date: Any, end_date: Any) -> dict[str, Any]:
    """Body of ``GET /dashboard/billing/usage?start_date=&end_date=``.

    ``total_usage`` is in US **cents**, as OpenAI's legacy endpoint returned it: NextChat
    shows ``Math.round(total_usage) / 100`` dollars as "used".
    """
    cents = max(0.0, float(total_cost_usd)) * 100.0
    return {
        "object": "list",
        "total_usage": round(cents, 4),
        "start_date": _date_str(start_date),
        "end_date": _date_str(end_date),
        "daily_costs": [],
    }


def _date_str(d: Any) -> str | None:
    if d is None:
        return None
    if isinstance(d, (dt.date, dt.datetime)):
        return d.strftime("%Y-%m-%d")
    return str(d)


def _parse_date(value: str | None, default: dt.date, name: str) -> dt.date:
    if not value:
        return default
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date like 2026-11-01", name) from None


class SpendLedger:
    """``cost_usd`` per UTC day of the turns in a session-log directory, kept current."""

    def __init__(self, log_dir: str) -> None:
        self._tailer = LogTailer(log_dir)
        self._by_day: dict[str, float] = defaultdict(float)
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def _catch_up(self) -> None:
        self._tailer.scan()
        for f in self._tailer.live():
            self._read(f)
        for f in self._tailer.vanished():  # rotated away or deleted: drain its handle first
            self._read(f)
            if self._tailer.writer_done(f):
                self._tailer.forget(f)
        self._tailer.keep_handles()

    def _read(self, f: TailedFile) -> None:
        end = f.offset
        try:
            for ln in self._tailer.lines(f):
                end = ln.end_offset
                try:
                    rec = json.loads(ln.raw)
                except ValueError:
                    continue  # a bad line counts nowhere (the dashboard sets it aside too)
                if not is_turn_record(rec):
                    continue
                rid = rec.get("request_id")
                if isinstance(rid, str):
                    if rid in self._seen:
                        continue  # the same turn again (a copy-truncate rotation)
                    self._seen.add(rid)
                try:
                    cost = float(rec.get("cost_usd") or 0.0)
                except (TypeError, ValueError):
                    cost = 0.0
                self._by_day[str(rec["@timestamp"])[:10]] += cost
        finally:
            f.offset = end

    def spent_usd(self, start: dt.date, end: dt.date) -> float:
        """Sum of ``cost_usd`` of turns with ``start <= day < end`` (UTC)."""
        lo, hi = start.isoformat(), end.isoformat()
        with self._lock:
            self._catch_up()
            return sum(v for day, v in self._by_day.items() if lo <= day < hi)


@router.get("/dashboard/billing/subscription")
async def billing_subscription(request: Request):
    return subscription_body(request.app.state.cost)


@router.get("/dashboard/billing/usage")
async def billing_usage(request: Request, start_date: str | None = None, end_date: str | None = None):
    today = dt.datetime.now(dt.timezone.utc).date()
    start = _parse_date(start_date, today.replace(day=1), "start_date")
    end = _parse_date(end_date, today + dt.timedelta(days=1), "end_date")
    total = await asyncio.to_thread(request.app.state.spend_ledger.spent_usd, start, end)
    return usage_body(total, start, end)
