"""NextChat's balance query, answered from the cost model.

NextChat's settings page asks ``/dashboard/billing/subscription`` for the budget
(``hard_limit_usd``) and ``/dashboard/billing/usage`` for what was spent (``total_usage``, in
cents). Spend is the sum of ``cost_usd`` over the node's own session log in the date range,
so it survives restarts and agrees with the dashboard.
"""
from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from fastapi import APIRouter, Request

from contracts.cost import CostModel
from contracts.log_schema import SESSION_DATASET
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


def spent_usd(log_dir: str, start: dt.date, end: dt.date) -> float:
    """Sum of ``cost_usd`` of session records with ``start <= day < end`` (UTC)."""
    from contracts.logfiles import JsonlLogReader

    total = 0.0
    lo, hi = start.isoformat(), end.isoformat()
    for record in JsonlLogReader(log_dir, dataset=SESSION_DATASET):
        day = str(record.get("@timestamp", ""))[:10]
        if lo <= day < hi:
            total += float(record.get("cost_usd") or 0.0)
    return total


@router.get("/dashboard/billing/subscription")
async def subscription(request: Request):
    return subscription_body(request.app.state.cost)


@router.get("/dashboard/billing/usage")
async def usage(request: Request, start_date: str | None = None, end_date: str | None = None):
    today = dt.datetime.now(dt.timezone.utc).date()
    start = _parse_date(start_date, today.replace(day=1), "start_date")
    end = _parse_date(end_date, today + dt.timedelta(days=1), "end_date")
    total = await asyncio.to_thread(spent_usd, request.app.state.config.log_dir, start, end)
    return usage_body(total, start, end)
