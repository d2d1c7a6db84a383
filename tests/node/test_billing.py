"""NextChat's balance query: the wire shapes (``inference.billing_router``) and the spend they
report, recounted from the raw session-log lines."""
from __future__ import annotations

import datetime as dt

import pytest

from contracts.cost import CostModel
from inference.billing_router import subscription_body, usage_body


@pytest.fixture(scope="module")
def model() -> CostModel:
    return CostModel.load()


def test_billing_views(model):
    sub = subscription_body(model)
    assert sub["hard_limit_usd"] == 1200
    use = usage_body(12.345, dt.date(2026, 11, 1), "2026-11-30")
    assert use["total_usage"] == pytest.approx(1234.5)  # cents: NextChat shows round(1234.5)/100 = 12.35 $
    assert use["start_date"] == "2026-11-01" and use["end_date"] == "2026-11-30"
    m = CostModel.from_dict({"deployment": "a", "instances": 2, "modes": {"a": {"monthly_usd": 450}}})
    assert subscription_body(m)["hard_limit_usd"] == 900  # no budget set: the deployment's monthly cost
