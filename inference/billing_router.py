"""NextChat's balance query, answered from the cost model.

NextChat's settings page asks ``/dashboard/billing/subscription`` for the budget
(``hard_limit_usd``) and ``/dashboard/billing/usage`` for what was spent (``total_usage``, in
cents). Spend is the sum of ``cost_usd`` over the node's own session log in the date range,
so it survives restarts and agrees with the dashboard.
"""
from __future__ import annotations

import asyncio
import datetime as dt

from fastapi import APIRouter, Request

from contracts.log_schema import SESSION_DATASET
from inference.http_errors import InvalidRequest

router = APIRouter()


def _parse_date(value: str | None, default: dt.date, name: str) -> dt.date:
    if not value:
        return default
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date like 2026-11-01", name) from None


def spent_usd(log_dir: str, start: dt.date, end: dt.date) -> float:
    """Sum of ``cost_usd`` of session records with ``start <= day < end`` (UTC)."""
    from monitor.logstore.jsonl import JsonlLogReader

    total = 0.0
    lo, hi = start.isoformat(), end.isoformat()
    for record in JsonlLogReader(log_dir, dataset=SESSION_DATASET):
        day = str(record.get("@timestamp", ""))[:10]
        if lo <= day < hi:
            total += float(record.get("cost_usd") or 0.0)
    return total


@router.get("/dashboard/billing/subscription")
async def subscription(request: Request):
    return request.app.state.cost.billing_subscription()


@router.get("/dashboard/billing/usage")
async def usage(request: Request, start_date: str | None = None, end_date: str | None = None):
    today = dt.datetime.now(dt.timezone.utc).date()
    start = _parse_date(start_date, today.replace(day=1), "start_date")
    end = _parse_date(end_date, today + dt.timedelta(days=1), "end_date")
    total = await asyncio.to_thread(spent_usd, request.app.state.config.log_dir, start, end)
    return request.app.state.cost.billing_usage(total, start, end)
