"""Generator of schema-valid session and feedback log records (the dashboard's fixture data).

Deterministic for a given seed. Records look like the node's (contracts/session-record.schema.json):
masked Chinese prompts, two model versions, every status, multi-turn sessions, feedback joined
by request_id. Used by the dashboard tests and by benchmarks/dashboard_bench.py.
"""
from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Iterator

from contracts.log_schema import ECS_VERSION, FEEDBACK_DATASET, SESSION_DATASET

MODELS = ("deepseek-7b-v1.5", "deepseek-7b-v1.5-fp8")
STATUS_WEIGHTS = {"completed": 88, "error": 3, "aborted": 3, "truncated": 2, "refused": 2, "rejected": 2}
PROMPTS = (
    "如何退货？我的电话是[PHONE]",
    "订单什么时候发货？",
    "请帮我总结本周销售报告",
    "发票开错了怎么办，邮箱 [EMAIL]",
    "What is the refund policy?",
    "设备故障申报流程是什么？",
)
RESPONSES = ("请访问订单页面，点击“申请退货”。", "通常在 48 小时内发货。", "本周销售额环比增长 12%。", "Refunds take 3-5 business days.")

# Cost of a turn at the defaults (local $1,200/month, 50 slots): latency_s * 1200 / (2,628,000 * 50).
SLOT_SECOND_USD = 1200 / (730 * 3600 * 50)


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def generate(n_turns: int, end: dt.datetime, span_s: float = 6 * 3600, seed: int = 7,
             feedback_ratio: float = 0.12, down_share: float = 0.35, ordered_starts: bool = False,
             titles: float = 0.0) -> Iterator[dict]:
    """Yield ``n_turns`` session records (and interleaved feedback records), times in
    [end - span_s, end), in time order per session (not globally)."""
    rng = random.Random(seed)
    statuses = list(STATUS_WEIGHTS)
    weights = list(STATUS_WEIGHTS.values())
    made = 0
    sess_no = 0
    while made < n_turns:
        sess_no += 1
        sid = f"s{seed}x{sess_no:07d}"
        n = min(rng.randint(1, 6), n_turns - made)
        if ordered_starts:  # sessions start evenly through the span (about 3.5 turns each)
            t = end - dt.timedelta(seconds=span_s) + dt.timedelta(seconds=(made / n_turns) * (span_s - 600) + rng.uniform(0, 30))
        else:
            t = end - dt.timedelta(seconds=rng.uniform(60.0, span_s))
        model = MODELS[0] if rng.random() < 0.7 else MODELS[1]
        for k in range(n):
            made += 1
            status = rng.choices(statuses, weights)[0]
            in_tok = rng.randint(20, 1500)
            out_tok = 0 if status in ("rejected", "error") else rng.randint(5, 600)
            ttft = None if status in ("rejected", "error") else round(rng.lognormvariate(5.3, 0.5), 1)
            lat = round((ttft or rng.uniform(1, 30)) + out_tok * rng.uniform(15, 40), 1)
            rid = f"chatcmpl-{seed}r{made:08d}"
            rec = {
                "@timestamp": iso(t),
                "ecs": {"version": ECS_VERSION},
                "event": {"dataset": SESSION_DATASET, "duration": int(lat * 1e6),
                          "outcome": "success" if status == "completed" else "failure"},
                "service": {"name": "seekwatch-node", "version": "0.1.0"},
                "host": {"name": "gpu-node-1"},
                "session_id": sid,
                "prompt": PROMPTS[rng.randrange(len(PROMPTS))],
                "response": "" if out_tok == 0 else RESPONSES[rng.randrange(len(RESPONSES))],
                "latency_ms": lat,
                "model_version": model,
                "request_id": rid,
                "turn_index": k,
                "ttft_ms": ttft,
                "status": status,
                "stream": True,
                "endpoint": "/v1/chat/completions",
                "cost_usd": round(lat / 1000.0 * SLOT_SECOND_USD, 12),
                "gen_ai": {"system": "deepseek", "request": {"model": model, "temperature": 0.7},
                           "usage": {"input_tokens": in_tok, "output_tokens": out_tok},
                           "response": {"id": rid, "model": model,
                                        "finish_reasons": ["length" if status == "truncated" else "stop"]}},
                "pii": {"redactions": {"phone": 1} if "[PHONE]" in PROMPTS[0] and k == 0 else {}, "total": 0},
            }
            yield rec
            if titles and k == 0 and rng.random() < titles:  # NextChat's title request after a first turn (extra)
                bg = json.loads(json.dumps(rec))
                bg.update({"@timestamp": iso(t + dt.timedelta(seconds=lat / 1000 + 1)), "request_id": rid + "t",
                           "request_kind": "title", "status": "completed", "prompt": "总结对话标题", "response": "退货咨询"})
                bg["gen_ai"]["response"]["id"] = rid + "t"
                yield bg
            if status != "rejected" and rng.random() < feedback_ratio:
                down = rng.random() < down_share
                yield {
                    "@timestamp": iso(t + dt.timedelta(seconds=lat / 1000 + 5)),
                    "ecs": {"version": ECS_VERSION},
                    "event": {"dataset": FEEDBACK_DATASET},
                    "service": {"name": "seekwatch-node"},
                    "host": {"name": "gpu-node-1"},
                    "feedback_id": f"fb-{seed}f{made:08d}",
                    "request_id": rid,
                    "session_id": sid,
                    "rating": "down" if down else "up",
                }
            t += dt.timedelta(seconds=lat / 1000 + rng.uniform(5, 90))


def generate_ordered(n_turns: int, end: dt.datetime, span_s: float = 6 * 3600, seed: int = 7,
                     concurrent: int = 200, **kw) -> Iterator[dict]:
    """Like :func:`generate`, but in global time order, as the node writes them (each record
    when its turn ends): ``concurrent`` sessions are interleaved through a heap, so memory
    stays small for any ``n_turns``. Session and turn contents follow the same distributions."""
    import heapq

    per = max(1, n_turns // concurrent)
    streams = []
    for i in range(concurrent):
        n = per if i < concurrent - 1 else n_turns - per * (concurrent - 1)
        if n > 0:
            streams.append(generate(n, end, span_s=span_s, seed=seed * 100_003 + i, ordered_starts=True, **kw))
    # each stream is in time order per session but sessions overlap: merge by timestamp through
    # a small reorder buffer per stream (a session spans minutes, the span hours)
    def ordered(stream):
        buf: list = []
        for rec in stream:
            heapq.heappush(buf, (rec["@timestamp"], id(rec), rec))
            if len(buf) > 1024:
                yield heapq.heappop(buf)[2]
        while buf:
            yield heapq.heappop(buf)[2]

    yield from heapq.merge(*(ordered(s) for s in streams), key=lambda r: r["@timestamp"])


def write_logs(log_dir: Path, records, per_file: int = 5000, partial_tail: bool = False,
               garbage_line: bool = False) -> list[Path]:
    """Write records as rotated ``session-NNNN.jsonl`` files; optionally end the last file with
    a partial line (a crash mid-write) and put one unparsable line in the middle."""
    log_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    fh = None
    for i, rec in enumerate(records):
        if i % per_file == 0:
            if fh:
                fh.close()
            paths.append(log_dir / f"session-{len(paths):04d}.jsonl")
            fh = open(paths[-1], "w", encoding="utf-8")
            if garbage_line and len(paths) == 1 and i == 0:
                pass
        fh.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
        if garbage_line and i == 3:
            fh.write('{"session_id": "broken", "latency_ms": \n')
    if fh:
        if partial_tail:
            fh.write('{"@timestamp":"2026-11-29T00:00:00.000Z","session_id":"crash","pro')
        fh.close()
    return paths
