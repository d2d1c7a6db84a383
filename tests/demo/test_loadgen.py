"""``seekwatch loadgen``: the conversation plans, its flags, and a run against a real node
(tiny model) whose metrics and session log must show the multi-turn sessions, the users'
aborts and thumbs-down, and masked personal data."""
from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from seekwatch.loadgen import DATA_FILE, load_scenarios, plan_conversation

PHONE = re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")


REPO = Path(__file__).resolve().parents[2]


def seekwatch(*args: str, **kw) -> subprocess.CompletedProcess:
    """``python -m seekwatch ARGS`` from this checkout (cwd first on the path)."""
    return subprocess.run([sys.executable, "-m", "seekwatch", *args], capture_output=True, text=True, cwd=REPO, **kw)


def test_scenarios_cover_the_seed():
    data = load_scenarios(DATA_FILE)
    ids = {s["id"] for s in data["scenarios"]}
    assert {"return", "order_tracking", "fault_report", "sales_summary"} <= ids
    assert {s["lang"] for s in data["scenarios"]} == {"zh", "en"}
    openings = [o for s in data["scenarios"] for o in s["opening"]]
    assert "如何退货？" in openings
    assert any("销售报告摘要" in o for o in openings) and any("申报故障" in o for o in openings)
    assert {s["lang"] for s in load_scenarios(DATA_FILE, "zh")["scenarios"]} == {"zh"}


def test_incident_scenarios_are_long_prompts():
    """The demo's load spike: pasted sales tables, each prompt several times a normal turn."""
    from seekwatch.demo import INCIDENT_SCENARIOS

    data = load_scenarios(INCIDENT_SCENARIOS)
    normal = max(len(o) for s in load_scenarios(DATA_FILE)["scenarios"] for o in s["opening"])
    assert {s["lang"] for s in data["scenarios"]} == {"zh", "en"}
    assert all(len(o) > 4 * normal for s in data["scenarios"] for o in s["opening"])


def test_plans_are_repeatable_filled_and_carry_pii():
    data = load_scenarios(DATA_FILE)
    plans = [plan_conversation(random.Random(i), data, (2, 6), 0.5) for i in range(300)]
    again = [plan_conversation(random.Random(i), data, (2, 6), 0.5) for i in range(300)]
    assert [p.user_messages for p in plans] == [p.user_messages for p in again]
    for p in plans:
        assert 2 <= len(p.user_messages) <= 6
        assert not any("{" in m or "}" in m for m in p.user_messages), p.user_messages
        if p.pii_index is not None:
            m = p.user_messages[p.pii_index]
            assert PHONE.search(m) or EMAIL.search(m), m
    with_pii = sum(p.pii_index is not None for p in plans)
    assert 100 < with_pii < 200
    # openings differ between conversations (order numbers, products), so turns of one
    # conversation share a fingerprint and different ones rarely do
    assert len({p.user_messages[0] for p in plans}) > 150


@pytest.mark.parametrize("args, needle", [
    (["--url", "localhost:8000"], "not an http(s) URL"),
    (["--url", "http://x", "--turns", "4", "2"], "MIN is larger than MAX"),
    (["--url", "http://x", "--stream-ratio", "1.5"], "ratio between 0 and 1"),
    (["--url", "http://x", "--sessions-per-second", "0"], "greater than 0"),
    (["--url", "http://x", "--duration", "5", "--sessions", "3"], "not allowed with"),
    ([], "required"),
    (["--url", "http://x", "--scenarios", "/nonexistent/s.yaml"], "No such file"),
    (["--url", "http://x", "--scenarios", "pyproject.toml"], "not valid YAML"),
])
def test_bad_flags_one_line_exit_2(args, needle):
    r = seekwatch("loadgen", *args, timeout=60)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_unreachable_node_exits_1():
    r = seekwatch("loadgen", "--url", "http://127.0.0.1:9", "--sessions", "2", "--think-time", "0", "0",
                  "--json", "--quiet", timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    s = json.loads(r.stdout)
    assert s["transport_errors"] == 2 and s["turns_answered"] == 0 and "Connect" in s["last_error"]


def _metrics(url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("seekwatch_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _is_identifier(key: str) -> bool:
    """Generated ids and hashes (``chatcmpl-<hex>``, ``fp-<hex>``): random hex can hold 11
    decimal digits in a row that look like a phone number, and no user text goes there."""
    return key == "id" or key.endswith(("_id", "_hash"))


def _strings(value) -> list[str]:
    """Every string inside a record (keys and values, generated ids left out), depth first."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() if not _is_identifier(k) for s in [k, *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _records(log_dir) -> list[dict]:
    recs = []
    for f in sorted(log_dir.glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                recs.append(json.loads(line))
    return recs


def test_drives_a_real_node(node_factory):
    node = node_factory("--max-batch", "16")
    r = seekwatch("loadgen", "--url", node.openai_base, "--sessions", "12", "--turns", "2", "4",
                  "--sessions-per-second", "4", "--abort-ratio", "0.5", "--feedback-ratio", "0.6",
                  "--negative-ratio", "0.8", "--pii-ratio", "0.7", "--think-time", "0", "0.2",
                  "--max-tokens", "48", "128", "--seed", "3", "--json", timeout=180)  # a hang fails here
    assert r.returncode == 0, r.stdout + r.stderr
    assert "loadgen" in r.stderr  # the progress line
    s = json.loads(r.stdout)
    assert s["sessions_started"] == s["sessions_finished"] == 12
    assert s["turns_sent"] >= 20 and not s["http_errors"] and s["transport_errors"] == 0
    assert s["aborted_by_user"] >= 1 and s["feedback"]["down"] >= 1 and s["pii_messages"] >= 1
    assert 0 < s["turns_streamed"] < s["turns_sent"] or s["turns_streamed"] == s["turns_sent"]

    # the node counted every turn, the users' aborts and their thumbs-down
    deadline = time.monotonic() + 15
    while True:
        m = _metrics(node.base_url)
        turns = sum(v for k, v in m.items() if k.startswith("seekwatch_requests_total{"))
        recs = _records(node.log_dir)
        sessions = [x for x in recs if x["event"]["dataset"] == "seekwatch.session"]
        feedback = [x for x in recs if x["event"]["dataset"] == "seekwatch.feedback"]
        if (turns == s["turns_sent"] and len(sessions) == turns
                and len(feedback) == s["feedback"]["down"] + s["feedback"]["up"]) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert turns == s["turns_sent"]
    assert sum(v for k, v in m.items() if k.startswith("seekwatch_requests_total{") and 'status="aborted"' in k) >= 1
    assert m['seekwatch_feedback_total{rating="down"}'] == s["feedback"]["down"]
    assert m['seekwatch_feedback_total{rating="up"}'] == s["feedback"]["up"]
    assert m['seekwatch_pii_redactions_total{kind="phone"}'] + m['seekwatch_pii_redactions_total{kind="email"}'] >= 1
    assert m["seekwatch_log_dropped_total"] == 0

    # the log: multi-turn sessions (NextChat resends the history: turn_index grows within a
    # session id), aborted turns, feedback joined by request id, personal data masked
    assert len(sessions) == turns
    by_session: dict[str, list[int]] = {}
    for x in sessions:
        by_session.setdefault(x["session_id"], []).append(x["turn_index"])
    assert len(by_session) >= 6
    assert any(sorted(t)[:2] == [0, 1] for t in by_session.values()), by_session
    assert max(max(t) for t in by_session.values()) >= 2
    assert {x["status"] for x in sessions} >= {"aborted", "truncated"}
    ids = {x["request_id"] for x in sessions}
    assert feedback and all(f["request_id"] in ids for f in feedback)
    # text only: a number (event.duration in ns) or a generated hex id may look like a phone number
    text = "\n".join(_strings(recs))
    assert "[PHONE]" in text or "[EMAIL]" in text
    assert not PHONE.search(text) and not EMAIL.search(text)
    # NextChat's OpenAI and DeepSeek providers post to different paths; both arrived
    assert {x["endpoint"] for x in sessions} == {"/v1/chat/completions", "/chat/completions"}
    # Chinese and English conversations both arrived
    prompts = " ".join(x["prompt"] for x in sessions)
    assert re.search(r"[\u4e00-\u9fff]", prompts) and re.search(r"[A-Za-z]{4,}", prompts)


def test_runs_until_sigint_then_prints_a_summary(node_factory):
    node = node_factory()
    p = subprocess.Popen([sys.executable, "-m", "seekwatch", "loadgen", "--url", node.base_url,
                          "--sessions-per-second", "3", "--think-time", "0", "0.3", "--max-tokens", "8", "32",
                          "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    time.sleep(4)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=40)
    assert p.returncode == 0, out + err
    s = json.loads(out)
    assert s["turns_sent"] >= 1 and s["sessions_started"] == s["sessions_finished"]


def test_api_key(node_factory):
    """Against a node with keys: --api-key gets answers; without it every turn is a 401 and
    the exit status says nothing worked."""
    node = node_factory(env={"SEEKWATCH_API_KEYS": "sk-loadgen-test-key-123456"})
    common = ["--url", node.base_url, "--sessions", "2", "--turns", "1", "2", "--think-time", "0", "0",
              "--max-tokens", "4", "8", "--feedback-ratio", "1", "--json", "--quiet", "--seed", "1"]
    ok = seekwatch("loadgen", *common, "--api-key", "sk-loadgen-test-key-123456", timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    s = json.loads(ok.stdout)
    assert s["turns_answered"] + s["aborted_by_user"] >= 2 and not s["http_errors"] and s["feedback_errors"] == 0
    denied = seekwatch("loadgen", *common, timeout=120)
    assert denied.returncode == 1, denied.stdout + denied.stderr
    s = json.loads(denied.stdout)
    assert s["http_errors"] == {"401": 2} and "HTTP 401" in s["last_error"]


def test_sse_split_on_newline_only():
    """A model may emit U+2028 / U+2029 inside an answer; JSON keeps them raw in the event, and
    the event must still arrive whole (httpx's aiter_lines would cut it there)."""
    import asyncio

    from seekwatch.loadgen import LoadConfig, LoadGenerator

    text = "退货\u2028请访问\u2029订单页\x85 done"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/feedback"):
            return httpx.Response(200, json={"ok": True})
        cid = "chatcmpl-" + "a" * 32
        chunks = [{"id": cid, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
                  {"id": cid, "choices": [{"index": 0, "delta": {"content": text}}]},
                  {"id": cid, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                  {"id": cid, "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5}}]
        body = "".join(f"data: {json.dumps(c, ensure_ascii=False)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream",
                                                                   "x-request-id": cid})

    cfg = LoadConfig(url="http://node.test", sessions=3, turns=(2, 2), stream_ratio=1.0, abort_ratio=0.0,
                     think_time=(0.0, 0.0), feedback_ratio=0.0, seed=5)
    s = asyncio.run(LoadGenerator(cfg, transport=httpx.MockTransport(handler)).run())
    assert s["transport_errors"] == 0, s["last_error"]
    assert s["finish_reasons"] == {"stop": 6} and s["completion_tokens"] == 30
