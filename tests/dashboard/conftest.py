"""Fixture data for the dashboard tests: schema-valid logs written by tests/dashboard/gen.py,
and the numbers a page must show, computed here independently (plain Python, no pandas)."""
from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest

from contracts.log_schema import validate_record
from contracts.signals import DEFAULT_CONVERSATION_IDLE_S, conversations, epoch_s, first_thumbs_down, recount

from .gen import generate, write_logs

END = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)
N_TURNS = 2500
SPAN_S = 40 * 3600  # data over the last 40 h: the 24 h range and its previous period both have data
# One turn whose text arrives unmasked (another writer): the dashboard must still mask it.
LEAKY_PROMPT = "我的手机号是13812345678，邮箱 zhang.san@example.com"


def parse_ts(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def pct(values, q):
    s = sorted(values)
    if not s:
        return None
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class Expected:
    """KPIs of the records in [start, end), from first principles."""

    def __init__(self, records, start, end):
        self.fb = [r for r in records if r["event"]["dataset"] == "seekwatch.feedback"]
        down = {r["request_id"] for r in self.fb if r["rating"] == "down"}
        up = {r["request_id"] for r in self.fb if r["rating"] == "up"}
        self.turns = [r for r in records if r["event"]["dataset"] == "seekwatch.session"
                      and start <= parse_ts(r["@timestamp"]) < end]
        t = self.turns
        chat = [r for r in t if r.get("request_kind", "chat") == "chat"]
        self.seconds = (end - start).total_seconds()
        self.requests = len(t)
        self.chat_turns = len(chat)
        self.done = {r["request_id"] for r in chat if r["status"] == "completed" and r["request_id"] not in down}
        self.completed = len(self.done)
        self.completion_rate = self.completed / self.chat_turns if self.chat_turns else None
        self.sessions = len({r["session_id"] for r in t})
        # dialogue completion: contracts.signals is the definition; recount over the whole log
        sess = [r for r in records if r["event"]["dataset"] == "seekwatch.session"]
        rc = recount(sess, self.fb, start.timestamp(), end.timestamp())
        assert rc.turns == self.chat_turns and rc.turns_completed == self.completed
        self.dialogues, self.completed_dialogues = rc.conversations_ended, rc.conversations_completed
        self.dialogue_completion_rate = rc.dialogue_completion
        self.input_tokens = sum(r["gen_ai"]["usage"]["input_tokens"] for r in t)
        self.output_tokens = sum(r["gen_ai"]["usage"]["output_tokens"] for r in t)
        self.cost_usd = sum(r["cost_usd"] for r in t)
        self.rated_down = sum(1 for r in t if r["request_id"] in down)
        self.rated_up = sum(1 for r in t if r["request_id"] in up)
        self.refused = sum(1 for r in chat if r["status"] == "refused")
        ttft = [r["ttft_ms"] for r in t if r["ttft_ms"] is not None]
        e2e = [r["latency_ms"] for r in t]
        for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            setattr(self, f"ttft_{name}", pct(ttft, q))
            setattr(self, f"e2e_{name}", pct(e2e, q))
        self.tokens_per_s = self.output_tokens / self.seconds
        self.by_model = {}
        idle = DEFAULT_CONVERSATION_IDLE_S
        down_at = first_thumbs_down(self.fb)
        convs = [c for c in conversations([(r["session_id"], epoch_s(r["@timestamp"]), r["request_id"], r["status"])
                                           for r in sess if r.get("request_kind", "chat") == "chat"], idle)
                 if start.timestamp() <= c.ends_at(idle) < end.timestamp()]
        model_of = {r["request_id"]: r["model_version"] for r in sess}
        for m in sorted({r["model_version"] for r in chat}):
            mt = [r for r in chat if r["model_version"] == m]
            mc = [c for c in convs if model_of[c.last_request_id] == m]
            self.by_model[m] = {"turns": len(mt), "completed": sum(r["request_id"] in self.done for r in mt),
                                "dialogues": len(mc), "completed_dialogues": sum(c.completed(down_at, idle) for c in mc),
                                "rated_down": sum(r["request_id"] in down for r in mt),
                                "refused": sum(r["status"] == "refused" for r in mt)}


@pytest.fixture(scope="session")
def fixture_records():
    recs = list(generate(N_TURNS, END, span_s=SPAN_S, seed=11, titles=0.3))
    first = next(r for r in recs if r["event"]["dataset"] == "seekwatch.session")
    first["prompt"] = LEAKY_PROMPT
    for r in recs:
        validate_record(r)
    return recs


@pytest.fixture(scope="session")
def fixture_logs(tmp_path_factory, fixture_records) -> Path:
    d = tmp_path_factory.mktemp("logs")
    write_logs(d, fixture_records, per_file=700, partial_tail=True, garbage_line=True)
    return d


@pytest.fixture(scope="session")
def expected(fixture_records):
    return Expected(fixture_records, END - dt.timedelta(hours=24), END)


@pytest.fixture
def dash_env(monkeypatch, fixture_logs, tmp_path):
    for k in ("URL", "PROMETHEUS", "NODE", "ALERTS_DB"):
        monkeypatch.delenv(f"SEEKWATCH_DASHBOARD_{k}", raising=False)
    monkeypatch.delenv("SEEKWATCH_COST_CONFIG", raising=False)
    monkeypatch.setenv("SEEKWATCH_DASHBOARD_LOGS", str(fixture_logs))
    monkeypatch.setenv("SEEKWATCH_DASHBOARD_NOW", END.isoformat())
    monkeypatch.setenv("SEEKWATCH_DASHBOARD_CACHE", str(tmp_path / "parse-cache"))
    monkeypatch.delenv("SEEKWATCH_DASHBOARD_AUTH_CONFIG", raising=False)
    monkeypatch.setenv("SEEKWATCH_DASHBOARD_INSECURE_NO_AUTH", "1")  # login: tests/reliability/test_dashboard_login.py
    return monkeypatch
