"""Schema-valid session and feedback records for the logstore tests, written the way the
node writes them: appended JSON lines, newline-terminated, possibly a partial last line.
(Deliberately independent of the node's own writer.)"""
from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Iterable, Iterator

PROMPTS = [
    "请帮我总结一下这篇关于大模型推理优化的文章",
    "How do I reset my VPN password?",
    "用Python写一个快速排序",
    "解释一下 continuous batching 的原理",
    "明天北京天气怎么样？",
    "Translate 你好世界 into French",
]
RESPONSES = [
    "好的，这篇文章主要讨论了三点：批处理、KV 缓存和量化。",
    "Open the portal, choose 'Forgot password' and follow the e-mail.",
    "def quicksort(a): return a if len(a) < 2 else ...",
    "连续批处理在每个解码步把新请求插入正在运行的批次。",
    "我无法获取实时天气信息。",
    "Bonjour le monde",
]
STATUSES = ["completed"] * 90 + ["error"] * 3 + ["aborted"] * 2 + ["truncated"] * 2 + ["refused"] * 3
BASE_TIME = dt.datetime(2026, 11, 28, 8, 0, 0, tzinfo=dt.timezone.utc)


def iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def session_record(i: int, rng: random.Random, *, latency_ms: float | None = None,
                   prompt: str | None = None, session_id: str | None = None, status: str | None = None,
                   tag: str = "") -> dict:
    """Turn ``i``; ``tag`` (alphanumeric) goes into the request id and ``host.name`` so
    tests sharing one engine can tell their documents apart."""
    lat = round(latency_ms if latency_ms is not None else rng.lognormvariate(6.0, 0.6), 3)
    status = status or rng.choice(STATUSES)
    in_tok, out_tok = rng.randint(5, 2000), rng.randint(0, 800)
    ttft = None if status in ("error", "refused") and rng.random() < 0.5 else round(min(lat, rng.uniform(20, 400)), 3)
    t = BASE_TIME + dt.timedelta(milliseconds=250 * i)
    rec = {
        "@timestamp": iso(t),
        "ecs": {"version": "8.11.0"},
        "event": {"dataset": "seekwatch.session", "duration": int(lat * 1_000_000),
                  "outcome": "success" if status == "completed" else "failure"},
        "service": {"name": "seekwatch-node", "version": "0.1.0"},
        "host": {"name": f"node-{tag}" if tag else "gpu-node-1"},
        "session_id": session_id or f"sess-{tag}{i // 5:06d}",
        "prompt": prompt if prompt is not None else rng.choice(PROMPTS),
        "response": rng.choice(RESPONSES),
        "latency_ms": lat,
        "model_version": "deepseek-r1-distill-qwen-7b@2026-11",
        "request_id": f"chatcmpl-{tag}{i:08d}a{rng.getrandbits(32):08x}",
        "turn_index": i % 5,
        "ttft_ms": ttft,
        "queue_ms": round(rng.uniform(0, 30), 3),
        "status": status,
        "stream": rng.random() < 0.8,
        "endpoint": "/v1/chat/completions",
        "cost_usd": round((in_tok + out_tok) * 2e-6, 8),
        "gen_ai": {
            "system": "deepseek",
            "request": {"model": "deepseek-chat", "temperature": 0.7, "top_p": 0.95, "max_tokens": 1024},
            "usage": {"input_tokens": in_tok, "output_tokens": out_tok},
            "response": {"id": f"chatcmpl-{i:08d}", "model": "deepseek-chat",
                         "finish_reasons": ["stop" if status == "completed" else "length" if status == "truncated" else "error"]},
        },
        "pii": {"redactions": {}, "total": 0},
    }
    if status == "error":
        rec["error"] = {"type": "server_error", "message": "CUDA out of memory", "code": None}
    return rec


def feedback_record(i: int, request_id: str, session_id: str, rating: str, comment: str = "") -> dict:
    rec = {
        "@timestamp": iso(BASE_TIME + dt.timedelta(milliseconds=250 * i + 100)),
        "ecs": {"version": "8.11.0"},
        "event": {"dataset": "seekwatch.feedback"},
        "service": {"name": "seekwatch-node"},
        "host": {"name": "gpu-node-1"},
        "feedback_id": f"fb-{i:08d}",
        "request_id": request_id,
        "session_id": session_id,
        "rating": rating,
        "pii": {"redactions": {}, "total": 0},
    }
    if comment:
        rec["comment"] = comment
    return rec


def records(n: int, seed: int = 7, start: int = 0, tag: str = "") -> Iterator[dict]:
    rng = random.Random(seed)
    for i in range(start, start + n):
        yield session_record(i, rng, tag=tag)


def dumps(rec: dict) -> str:
    return json.dumps(rec, ensure_ascii=False, separators=(",", ":"))


def append_lines(path: Path, recs: Iterable[dict]) -> int:
    """Append records as the node does: one line each, newline-terminated, flushed."""
    n = 0
    with open(path, "a", encoding="utf-8") as fh:
        for r in recs:
            fh.write(dumps(r) + "\n")
            n += 1
    return n


def append_partial(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
