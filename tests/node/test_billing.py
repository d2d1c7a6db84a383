"""NextChat's balance query: the wire shapes (``inference.billing_router``) and the spend they
report, recounted from the raw session-log lines."""
from __future__ import annotations

import datetime as dt
import json

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


# --------------------------------------------------------------------------- spend from the log
END = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)


def _write(path, records, tail: str = ""):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
        fh.write(tail)


def _recount(log_dir, start: dt.date, end: dt.date) -> float:
    """Independent recount from the raw lines of every file: turns once by request_id."""
    by_id = {}
    for p in sorted(log_dir.rglob("*")):
        if not p.is_file() or not (p.name.endswith(".jsonl") or ".jsonl." in p.name):
            continue
        for line in p.read_bytes().split(b"\n")[:-1]:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and r.get("event", {}).get("dataset") == "seekwatch.session":
                by_id[r["request_id"]] = r
    lo, hi = start.isoformat(), end.isoformat()
    return sum(r["cost_usd"] for r in by_id.values() if lo <= r["@timestamp"][:10] < hi)


@pytest.fixture()
def rotated_logs(tmp_path):
    """Turns over four days in a live file, its numbered rotations, a second node's file in a
    sub-folder, a copy-truncate duplicate of one part, a corrupt line and a torn last line."""
    from tests.dashboard.gen import generate

    recs = list(generate(400, END, span_s=4 * 86400, seed=11))
    q = len(recs) // 4
    base = tmp_path / "session-2026-11-25.0001.jsonl"
    _write(tmp_path / (base.name + ".2"), recs[:q])
    _write(tmp_path / (base.name + ".1"), recs[q:2 * q])
    _write(tmp_path / "copy-2026-11-25.0001.jsonl.7", recs[q:q + 20])  # lines seen twice
    _write(base, recs[2 * q:3 * q])
    with open(base, "a", encoding="utf-8") as fh:
        fh.write('{"session_id": "broken", "cost_usd": \n')
    _write(tmp_path / "node-b" / "session-2026-11-27.0001.jsonl", recs[3 * q:],
           tail='{"@timestamp":"2026-11-29T00:00:00.000Z","session_id":"crash","cost_usd":99')
    return tmp_path


RANGES = [(dt.date(2026, 11, 1), dt.date(2026, 12, 1)), (dt.date(2026, 11, 26), dt.date(2026, 11, 28)),
          (dt.date(2026, 11, 29), dt.date(2026, 11, 30))]


def test_spend_counts_rotated_files_and_agrees_with_the_dashboard(rotated_logs):
    from dashboards.data.base import Window
    from dashboards.data.jsonl import JsonlSource
    from inference.billing_router import SpendLedger

    ledger = SpendLedger(str(rotated_logs))
    source = JsonlSource(rotated_logs)
    source.refresh()
    for start, end in RANGES:
        spent = ledger.spent_usd(start, end)
        assert spent == pytest.approx(_recount(rotated_logs, start, end), rel=1e-12)
        w = Window(dt.datetime.combine(start, dt.time(), dt.timezone.utc), dt.datetime.combine(end, dt.time(), dt.timezone.utc))
        assert source.kpis(w).cost_usd == pytest.approx(spent, rel=1e-9)
    assert ledger.spent_usd(*RANGES[0]) > 0


def test_a_query_reads_only_what_was_appended(rotated_logs):
    from inference.billing_router import SpendLedger
    from tests.dashboard.gen import generate

    ledger = SpendLedger(str(rotated_logs))
    read = []
    lines = ledger._tailer.lines
    ledger._tailer.lines = lambda f: (read.append(ln) or ln for ln in lines(f))
    first = ledger.spent_usd(*RANGES[0])
    assert len(read) > 400
    read.clear()
    assert ledger.spent_usd(*RANGES[0]) == first and read == []  # nothing new: nothing read
    more = [r for r in generate(30, END, span_s=3600, seed=12)]
    live = rotated_logs / "session-2026-11-25.0001.jsonl"
    live.rename(rotated_logs / "session-2026-11-25.0001.jsonl.0")  # rotated by rename: not read again
    _write(live, more)
    assert ledger.spent_usd(*RANGES[0]) == pytest.approx(_recount(rotated_logs, *RANGES[0]), rel=1e-12)
    assert len(read) == len(more)


def test_a_file_rotated_out_of_the_log_dir_is_counted_to_its_end(tmp_path):
    """Turns appended after a query, then the file moved out of the log directory (logrotate's
    ``olddir``) before the next one: counted, through the handle kept since the last query,
    and so are turns its writer appends after the move; recounted from the raw lines."""
    from inference.billing_router import SpendLedger
    from tests.dashboard.gen import generate

    recs = list(generate(90, END, span_s=3600, seed=13))
    logs, archive = tmp_path / "logs", tmp_path / "archive"
    archive.mkdir()
    live = logs / "session-2026-11-29.0001.jsonl"
    _write(live, recs[:30])
    ledger = SpendLedger(str(logs))
    day = (dt.date(2026, 11, 29), dt.date(2026, 11, 30))
    assert ledger.spent_usd(*day) == pytest.approx(_recount(tmp_path, *day), rel=1e-12)
    with open(live, "a", encoding="utf-8") as writer:
        _write(live, recs[30:50])
        live.rename(archive / live.name)
        _write(live, recs[50:70])  # the writer's next file
        assert ledger.spent_usd(*day) == pytest.approx(_recount(tmp_path, *day), rel=1e-12)
        writer.write("".join(json.dumps(r) + "\n" for r in recs[70:]))  # through its old descriptor
    assert ledger.spent_usd(*day) == pytest.approx(_recount(tmp_path, *day), rel=1e-12)
    assert _recount(tmp_path, *day) == pytest.approx(
        sum(r["cost_usd"] for r in recs if r["event"]["dataset"] == "seekwatch.session"
            and r["@timestamp"].startswith("2026-11-29")), rel=1e-12)
    assert len(ledger._tailer.vanished()) == 1  # kept until its writer has left it for a while


def test_usage_route_reports_the_log_in_cents(rotated_logs):
    """NextChat's balance query over HTTP (in-process ASGI, engine not started)."""
    import asyncio

    import httpx

    from inference.app import create_app
    from inference.config import NodeConfig
    from inference.engine.upstream import UpstreamEngine, UpstreamOptions

    config = NodeConfig(engine="upstream", engine_options=UpstreamOptions(url="http://127.0.0.1:9/v1"),
                        instrumentation=False, log_dir=str(rotated_logs))
    app = create_app(config, engine=UpstreamEngine(config.engine_options.url))

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node") as c:
            return await c.get("/dashboard/billing/usage", params={"start_date": "2026-11-01", "end_date": "2026-12-01"})

    r = asyncio.run(main())
    assert r.status_code == 200, r.text
    assert r.json()["total_usage"] == pytest.approx(_recount(rotated_logs, *RANGES[0]) * 100, abs=1e-3)
