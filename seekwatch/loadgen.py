"""``seekwatch loadgen``: drive a node with realistic multi-turn customer-service chats.

Sessions arrive as a Poisson process (``--sessions-per-second``). Each one picks a scenario
from ``seekwatch/data/scenarios.yaml`` (如何退货 returns, order tracking, fault reports
and sales-report summaries, in Chinese and English) and a client profile (NextChat web or
desktop, an API integration), then talks for ``--turns MIN MAX`` turns the way NextChat does:
every request resends the whole history, the user reads the reply and thinks before the next
message. Some users stop a streaming reply midway (``--abort-ratio``: the connection is
closed, as NextChat's stop button does), some rate the answer through ``POST /v1/feedback``
(``--feedback-ratio``, mostly thumbs-down), and a share of sessions mention a phone number
or an e-mail address (``--pii-ratio``) so that the node's masking shows in its logs.

A progress line goes to stderr; a summary (``--json`` for machine-readable) to stdout. The
exit status is 0 when at least one turn was answered, 1 when none was, 2 for bad flags.

Nothing heavy is imported at module import time (httpx and yaml are imported when it runs).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import signal
import sys
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from contracts.cli_types import positive_int

DATA_FILE = Path(__file__).with_name("data") / "scenarios.yaml"
USER_AGENT = "seekwatch-loadgen/0.1 (NextChat-like)"


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
@dataclass
class LoadConfig:
    url: str
    sessions_per_second: float = 1.0
    turns: tuple[int, int] = (2, 5)
    stream_ratio: float = 0.8
    duration: float | None = None
    sessions: int | None = None
    feedback_ratio: float = 0.25
    negative_ratio: float = 0.8
    abort_ratio: float = 0.1
    pii_ratio: float = 0.15
    think_time: tuple[float, float] = (0.5, 3.0)
    max_tokens: tuple[int, int] = (64, 256)
    api_key: str | None = None
    model: str = "deepseek-chat"
    seed: int | None = None
    lang: str = "both"
    max_concurrency: int = 64
    timeout: float = 120.0
    drain: float = 15.0
    scenarios_file: Path = DATA_FILE

    @property
    def base_url(self) -> str:
        base = self.url.rstrip("/")
        return base[: -len("/v1")] if base.endswith("/v1") else base


def load_scenarios(path: Path | str = DATA_FILE, lang: str = "both") -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict) or not data.get("scenarios") or not data.get("clients"):
        raise ValueError(f"{path}: expected 'clients' and 'scenarios'")
    scenarios = [s for s in data["scenarios"] if lang == "both" or s["lang"] == lang]
    if not scenarios:
        raise ValueError(f"{path}: no scenario in language {lang!r}")
    for s in scenarios:
        if not s.get("opening") or not s.get("follow_up"):
            raise ValueError(f"{path}: scenario {s.get('id')!r} needs 'opening' and 'follow_up'")
    # every placeholder must have a value: a typo fails here, in one line, not mid-run
    sample = _values(random.Random(0), data)
    for s in scenarios:
        for text in [*s["opening"], *s["follow_up"], *(s.get("pii") or [])]:
            try:
                text.format(**sample)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"{path}: scenario {s.get('id')!r}: {text[:40]!r}…: unknown placeholder {exc}") from None
    data["scenarios"] = scenarios
    return data


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


@dataclass
class LoadStats:
    started_at: float = field(default_factory=time.monotonic)
    sessions_started: int = 0
    sessions_finished: int = 0
    turns_sent: int = 0
    turns_streamed: int = 0
    finish: dict[str, int] = field(default_factory=dict)   # stop / length / ... from the node
    aborted: int = 0            # the user stopped the stream
    cut_at_end: int = 0         # still running when --duration (plus drain) ran out
    http_errors: dict[str, int] = field(default_factory=dict)  # status code -> count
    transport_errors: int = 0
    feedback: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    feedback_errors: int = 0
    pii_messages: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    by_scenario: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None

    @property
    def answered(self) -> int:
        return sum(self.finish.values())

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def progress_line(self) -> str:
        el = self.elapsed
        errs = sum(self.http_errors.values()) + self.transport_errors
        p50, p99 = _pct(self.ttft_ms, 0.5), _pct(self.ttft_ms, 0.99)
        ttft = f"TTFT p50 {p50:.0f} ms p99 {p99:.0f} ms" if p50 is not None else "TTFT –"
        return (f"loadgen {el:5.0f}s  sessions {self.sessions_started} ({self.sessions_finished} done)  "
                f"turns {self.turns_sent} ({self.turns_sent / el if el > 0 else 0:.1f}/s): "
                f"{self.finish.get('stop', 0)} stop, {self.finish.get('length', 0)} truncated, "
                f"{self.aborted} aborted, {errs} errors  feedback {self.feedback['down']}↓ {self.feedback['up']}↑  {ttft}")

    def summary(self) -> dict[str, Any]:
        el = self.elapsed
        return {
            "elapsed_s": round(el, 2),
            "sessions_started": self.sessions_started,
            "sessions_finished": self.sessions_finished,
            "turns_sent": self.turns_sent,
            "turns_answered": self.answered,
            "turns_per_s": round(self.turns_sent / el, 2) if el > 0 else 0.0,
            "turns_streamed": self.turns_streamed,
            "finish_reasons": dict(self.finish),
            "aborted_by_user": self.aborted,
            "cut_at_end": self.cut_at_end,
            "http_errors": dict(self.http_errors),
            "transport_errors": self.transport_errors,
            "feedback": dict(self.feedback),
            "feedback_errors": self.feedback_errors,
            "pii_messages": self.pii_messages,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_ms": {k: (round(v, 1) if v is not None else None)
                        for k, v in (("p50", _pct(self.ttft_ms, 0.5)), ("p90", _pct(self.ttft_ms, 0.9)),
                                     ("p99", _pct(self.ttft_ms, 0.99)))},
            "latency_ms": {k: (round(v, 1) if v is not None else None)
                           for k, v in (("p50", _pct(self.latency_ms, 0.5)), ("p99", _pct(self.latency_ms, 0.99)))},
            "scenarios": dict(self.by_scenario),
            "last_error": self.last_error,
        }


def format_summary(s: dict[str, Any]) -> str:
    fin = s["finish_reasons"]
    errs = ", ".join(f"{n}× HTTP {c}" for c, n in sorted(s["http_errors"].items())) or "none"
    t, lat = s["ttft_ms"], s["latency_ms"]
    fmt = lambda v: "–" if v is None else f"{v:.0f}"  # noqa: E731
    lines = [
        f"seekwatch loadgen: {s['elapsed_s']:.1f} s, {s['sessions_started']} sessions "
        f"({s['sessions_finished']} finished), {s['turns_sent']} turns ({s['turns_per_s']:.2f}/s), "
        f"{s['turns_streamed']} streamed",
        f"  answers:   {s['turns_answered']} ({', '.join(f'{n} {k}' for k, n in sorted(fin.items())) or 'none'}); "
        f"{s['aborted_by_user']} stopped by the user; {s['cut_at_end']} cut at the end",
        f"  errors:    {errs}; {s['transport_errors']} connection errors"
        + (f" (last: {s['last_error']})" if s["last_error"] else ""),
        f"  feedback:  {s['feedback']['down']} down, {s['feedback']['up']} up"
        + (f", {s['feedback_errors']} failed" if s["feedback_errors"] else "")
        + f"; personal data in {s['pii_messages']} messages (masked by the node)",
        f"  client-side TTFT ms p50/p90/p99: {fmt(t['p50'])}/{fmt(t['p90'])}/{fmt(t['p99'])}; "
        f"turn latency ms p50/p99: {fmt(lat['p50'])}/{fmt(lat['p99'])}",
        f"  tokens:    {s['prompt_tokens']} prompt, {s['completion_tokens']} completion",
        "  scenarios: " + ", ".join(f"{k} {v}" for k, v in sorted(s["scenarios"].items())),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# conversations
# --------------------------------------------------------------------------------------------
def _weighted(rng: random.Random, items: list[dict[str, Any]]) -> dict[str, Any]:
    return rng.choices(items, weights=[float(i.get("weight", 1)) for i in items], k=1)[0]


def _values(rng: random.Random, data: dict[str, Any]) -> dict[str, Any]:
    from inference.tiny_model import fill_values  # the shapes the trained tiny model has seen

    return fill_values(rng, data.get("values") or {})


@dataclass
class ScriptedConversation:
    """One customer's session: the user messages it will send, in order."""

    scenario: str
    lang: str
    client: dict[str, Any]
    user_messages: list[str]
    pii_index: int | None   # which user message carries personal data, if any


def plan_conversation(rng: random.Random, data: dict[str, Any], turns: tuple[int, int], pii_ratio: float) -> ScriptedConversation:
    sc = _weighted(rng, data["scenarios"])
    client = _weighted(rng, data["clients"])
    values = _values(rng, data)
    n = rng.randint(turns[0], turns[1])
    follow = list(sc["follow_up"])
    rng.shuffle(follow)
    msgs = [rng.choice(sc["opening"])]
    while len(msgs) < n:
        msgs.append(follow[(len(msgs) - 1) % len(follow)])
    pos = None
    if sc.get("pii") and rng.random() < pii_ratio:
        pii_msg = rng.choice(sc["pii"])
        pos = rng.randint(0, len(msgs) - 1)
        sep = " " if sc["lang"] == "en" else ""
        msgs[pos] = msgs[pos] + sep + pii_msg if pos == 0 else pii_msg + sep + msgs[pos]
    msgs = [m.format(**values) for m in msgs]
    return ScriptedConversation(sc["id"], sc["lang"], client, msgs, pos)


@dataclass
class TurnResult:
    content: str | None = None     # what the user saw (partial when aborted); None: no answer
    request_id: str | None = None
    finish_reason: str | None = None
    aborted: bool = False


class LoadGenerator:
    def __init__(self, cfg: LoadConfig, on_progress: Callable[[LoadStats], None] | None = None,
                 transport: Any = None):
        self.transport = transport  # an httpx transport (tests); None: the network
        self.cfg = cfg
        self.data = load_scenarios(cfg.scenarios_file, cfg.lang)
        self.rng = random.Random(cfg.seed)
        self.stats = LoadStats()
        self.on_progress = on_progress
        self._no_new_turns = asyncio.Event()
        self._stop = asyncio.Event()

    # -- public ------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop starting sessions and turns; in-flight turns get ``drain`` seconds."""
        self._stop.set()
        self._no_new_turns.set()

    async def run(self) -> dict[str, Any]:
        import httpx

        cfg = self.cfg
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json, text/event-stream"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        limits = httpx.Limits(max_connections=cfg.max_concurrency + 8, max_keepalive_connections=cfg.max_concurrency)
        timeout = httpx.Timeout(cfg.timeout, connect=10.0)
        self.stats = LoadStats()
        async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout, trust_env=False,
                                     transport=self.transport) as client:
            self.client = client
            tasks: set[asyncio.Task] = set()
            sem = asyncio.Semaphore(cfg.max_concurrency)
            deadline = time.monotonic() + cfg.duration if cfg.duration is not None else None
            progress = asyncio.create_task(self._progress_loop()) if self.on_progress else None
            try:
                while not self._stop.is_set():
                    if cfg.sessions is not None and self.stats.sessions_started >= cfg.sessions:
                        break
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    # at --max-concurrency, the next arrival waits for a conversation to end
                    while sem.locked() and not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                        await asyncio.sleep(0.05)
                    if self._stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                        break
                    await sem.acquire()  # free now: returns at once
                    seed = self.rng.getrandbits(64)
                    self.stats.sessions_started += 1
                    t = asyncio.create_task(self._session(random.Random(seed)))
                    tasks.add(t)
                    t.add_done_callback(lambda t: (tasks.discard(t), sem.release()))
                    gap = self.rng.expovariate(cfg.sessions_per_second) if cfg.sessions_per_second > 0 else 0.0
                    wait = gap if deadline is None else max(0.0, min(gap, deadline - time.monotonic()))
                    try:
                        await asyncio.wait_for(self._stop.wait(), timeout=wait)
                    except asyncio.TimeoutError:
                        pass
                # no more sessions: with --duration or a stop, no more turns either
                if deadline is not None or self._stop.is_set():
                    self._no_new_turns.set()
                    if tasks:
                        await asyncio.wait(set(tasks), timeout=cfg.drain)
                elif tasks:  # --sessions N: let every conversation end
                    stop_wait = asyncio.create_task(self._stop.wait())
                    while tasks and not self._stop.is_set():
                        await asyncio.wait(set(tasks) | {stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                    stop_wait.cancel()
                    if tasks:
                        self._no_new_turns.set()
                        await asyncio.wait(set(tasks), timeout=cfg.drain)
                for t in list(tasks):
                    t.cancel()
                if tasks:
                    await asyncio.wait(set(tasks), timeout=5)
            finally:
                if progress:
                    progress.cancel()
                    try:
                        await progress
                    except asyncio.CancelledError:
                        pass
                    self.on_progress(self.stats)
        return self.stats.summary()

    # -- internals ---------------------------------------------------------------------------
    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.on_progress(self.stats)

    async def _think(self, rng: random.Random) -> bool:
        """The user reads and types; False when the run is over meanwhile."""
        lo, hi = self.cfg.think_time
        try:
            await asyncio.wait_for(self._no_new_turns.wait(), timeout=rng.uniform(lo, hi))
            return False
        except asyncio.TimeoutError:
            return True

    async def _session(self, rng: random.Random) -> None:
        cfg, st = self.cfg, self.stats
        conv = plan_conversation(rng, self.data, cfg.turns, cfg.pii_ratio)
        key = f"{conv.scenario}/{conv.lang}"
        st.by_scenario[key] = st.by_scenario.get(key, 0) + 1
        messages: list[dict[str, str]] = []
        if conv.client.get("system"):
            messages.append({"role": "system", "content": conv.client["system"]})
        try:
            for i, text in enumerate(conv.user_messages):
                if self._no_new_turns.is_set():
                    break
                if i and not await self._think(rng):
                    break
                messages.append({"role": "user", "content": text})
                if i == conv.pii_index:
                    st.pii_messages += 1
                res = await self._turn(rng, conv, messages)
                if res.content is None:
                    break  # an error: NextChat shows it, the user gives up
                messages.append({"role": "assistant", "content": res.content})
                if res.request_id and rng.random() < cfg.feedback_ratio:
                    await self._feedback(rng, res.request_id, conv)
                if res.aborted and rng.random() < 0.5:
                    break  # stopped the answer and left
        finally:
            st.sessions_finished += 1

    def _body(self, rng: random.Random, conv: ScriptedConversation, messages: list[dict[str, str]], stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": list(messages), "stream": stream, "model": self.cfg.model,
            # NextChat's default temperature is 0.5; its built-in masks use 0.3-0.5; some users raise it
            "temperature": round(rng.choice([0.3, 0.5, 0.5, 0.5, 0.7]), 2), "presence_penalty": 0,
            "frequency_penalty": 0, "top_p": 1, "max_tokens": rng.randint(*self.cfg.max_tokens),
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if conv.client.get("stop"):
            body["stop"] = conv.client["stop"]
        return body

    async def _turn(self, rng: random.Random, conv: ScriptedConversation, messages: list[dict[str, str]]) -> TurnResult:
        import httpx

        from contracts.sse import aiter_data

        cfg, st = self.cfg, self.stats
        stream = rng.random() < cfg.stream_ratio
        abort_after = rng.randint(1, 12) if stream and rng.random() < cfg.abort_ratio else None
        path = conv.client.get("path", "/v1/chat/completions")
        url = cfg.base_url + path
        body = self._body(rng, conv, messages, stream)
        st.turns_sent += 1
        st.turns_streamed += stream
        t0 = time.monotonic()
        res = TurnResult()
        try:
            if not stream:
                r = await self.client.post(url, json=body)
                if r.status_code != 200:
                    self._http_error(r.status_code, r.text)
                    return res
                data = r.json()
                choice = data["choices"][0]
                res.request_id = data.get("id") or r.headers.get("x-request-id")
                res.content = choice["message"].get("content") or ""
                res.finish_reason = choice.get("finish_reason") or "stop"
                self._usage(data.get("usage"))
                st.latency_ms.append((time.monotonic() - t0) * 1000)
                st.finish[res.finish_reason] = st.finish.get(res.finish_reason, 0) + 1
                return res
            parts: list[str] = []
            chunks = 0
            async with self.client.stream("POST", url, json=body) as r:
                if r.status_code != 200:
                    self._http_error(r.status_code, (await r.aread()).decode(errors="replace"))
                    return res
                res.request_id = r.headers.get("x-request-id")
                async with aclosing(aiter_data(r)) as events:
                    async for payload in events:
                        chunk = json.loads(payload)
                        res.request_id = res.request_id or chunk.get("id")
                        if chunk.get("usage"):
                            self._usage(chunk["usage"])
                        for ch in chunk.get("choices") or []:
                            delta = ch.get("delta") or {}
                            text = delta.get("content") or delta.get("reasoning_content")
                            if text:
                                if not parts:
                                    st.ttft_ms.append((time.monotonic() - t0) * 1000)
                                if delta.get("content"):
                                    parts.append(delta["content"])
                                chunks += 1
                            if ch.get("finish_reason"):
                                res.finish_reason = ch["finish_reason"]
                        if abort_after is not None and chunks >= abort_after:
                            res.aborted = True
                            break  # leaving the block closes the connection: the node cancels
            res.content = "".join(parts)
            if res.aborted:
                st.aborted += 1
            else:
                st.latency_ms.append((time.monotonic() - t0) * 1000)
                fr = res.finish_reason or "none"
                st.finish[fr] = st.finish.get(fr, 0) + 1
            return res
        except asyncio.CancelledError:
            st.cut_at_end += 1
            raise
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            st.transport_errors += 1
            st.last_error = f"{type(exc).__name__}: {exc}"[:200]
            return TurnResult()

    def _http_error(self, code: int, text: str) -> None:
        st = self.stats
        st.http_errors[str(code)] = st.http_errors.get(str(code), 0) + 1
        try:
            msg = json.loads(text)["error"]["message"]
        except Exception:  # noqa: BLE001 - any non-OpenAI error body
            msg = text.strip()[:120]
        st.last_error = f"HTTP {code}: {msg}"[:200]

    def _usage(self, usage: dict[str, Any] | None) -> None:
        if usage:
            self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)

    async def _feedback(self, rng: random.Random, request_id: str, conv: ScriptedConversation) -> None:
        import httpx

        rating = "down" if rng.random() < self.cfg.negative_ratio else "up"
        body: dict[str, Any] = {"request_id": request_id, "rating": rating}
        comments = (self.data.get("feedback") or {}).get(rating) or []
        if comments and rng.random() < 0.6:
            body["comment"] = rng.choice(comments).format(**_values(rng, self.data))
        try:
            r = await self.client.post(self.cfg.base_url + "/v1/feedback", json=body)
            if r.status_code // 100 == 2:
                self.stats.feedback[rating] += 1
            else:
                self.stats.feedback_errors += 1
        except httpx.HTTPError:
            self.stats.feedback_errors += 1


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
_pos_int = positive_int("an integer")


def _positive_float(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a number") from None
    if not f > 0 or math.isinf(f):
        raise argparse.ArgumentTypeError(f"{v} must be greater than 0")
    return f


def _ratio(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a number") from None
    if not 0.0 <= f <= 1.0:
        raise argparse.ArgumentTypeError(f"{v} is not a ratio between 0 and 1")
    return f


def _nonneg_float(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a number") from None
    if f < 0 or math.isinf(f) or math.isnan(f):
        raise argparse.ArgumentTypeError(f"{v} must be 0 or more")
    return f


TRAFFIC_DEFAULTS: dict[str, Any] = {
    "sessions_per_second": 1.0, "turns": [2, 5], "stream_ratio": 0.8, "feedback_ratio": 0.25,
    "negative_ratio": 0.8, "abort_ratio": 0.1, "pii_ratio": 0.15, "think_time": [0.5, 3.0],
    "max_tokens": [64, 256], "max_concurrency": 64,
}


def add_arguments(p: argparse.ArgumentParser, *, url_required: bool = True,
                  defaults: dict[str, Any] | None = None) -> None:
    """Traffic flags, shared with ``seekwatch demo`` (which passes its own ``defaults``)."""
    d = {**TRAFFIC_DEFAULTS, **(defaults or {})}
    show = lambda k: " ".join(f"{v:g}" for v in d[k]) if isinstance(d[k], list) else f"{d[k]:g}"  # noqa: E731
    if url_required:
        p.add_argument("--url", required=True,
                       help="the node's base URL, e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted)")
    p.add_argument("--sessions-per-second", type=_positive_float, default=d["sessions_per_second"], metavar="R",
                   help=f"new conversations per second, Poisson arrivals (default {show('sessions_per_second')})")
    p.add_argument("--turns", type=_pos_int, nargs=2, default=d["turns"], metavar=("MIN", "MAX"),
                   help=f"user messages per conversation, uniform between MIN and MAX (default {show('turns')})")
    p.add_argument("--stream-ratio", type=_ratio, default=d["stream_ratio"], metavar="F",
                   help=f"share of turns sent with stream: true (default {show('stream_ratio')})")
    p.add_argument("--feedback-ratio", type=_ratio, default=d["feedback_ratio"], metavar="F",
                   help=f"share of answered turns the user rates via /v1/feedback (default {show('feedback_ratio')})")
    p.add_argument("--negative-ratio", type=_ratio, default=d["negative_ratio"], metavar="F",
                   help=f"share of ratings that are thumbs-down (default {show('negative_ratio')})")
    p.add_argument("--abort-ratio", type=_ratio, default=d["abort_ratio"], metavar="F",
                   help=f"share of streamed turns the user stops midway (default {show('abort_ratio')})")
    p.add_argument("--pii-ratio", type=_ratio, default=d["pii_ratio"], metavar="F",
                   help=f"share of conversations mentioning a phone number or e-mail (default {show('pii_ratio')})")
    p.add_argument("--think-time", type=_nonneg_float, nargs=2, default=d["think_time"], metavar=("MIN", "MAX"),
                   help=f"seconds between a reply and the next message (default {show('think_time')})")
    p.add_argument("--max-tokens", type=_pos_int, nargs=2, default=d["max_tokens"], metavar=("MIN", "MAX"),
                   help=f"max_tokens per request, uniform between MIN and MAX (default {show('max_tokens')})")
    p.add_argument("--api-key", metavar="KEY", help="bearer key, when the node has keys configured")
    p.add_argument("--model", default="deepseek-chat", help="model name to ask for (default deepseek-chat)")
    p.add_argument("--lang", choices=["zh", "en", "both"], default="both", help="conversation language (default both)")
    p.add_argument("--scenarios", type=Path, default=DATA_FILE, metavar="FILE",
                   help="conversations to send: a YAML file in the format of the bundled seekwatch/data/scenarios.yaml "
                        "(seekwatch/data/incident.yaml holds the demo's long-prompt spike)")
    p.add_argument("--seed", type=int, help="random seed, for a repeatable mix of conversations")
    p.add_argument("--max-concurrency", type=_pos_int, default=d["max_concurrency"], metavar="N",
                   help=f"conversations open at once; arrivals wait beyond (default {show('max_concurrency')})")


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_text, description=(
        help_text + ". Conversations are customer-service scenarios (returns 如何退货, order tracking, fault "
        "reports, sales-report summaries) in Chinese and English, resend the whole history like NextChat, "
        "sometimes stop a stream, rate answers and mention personal data. Runs until --duration, "
        "--sessions or Ctrl-C."))
    add_arguments(p)
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=_positive_float, metavar="S",
                      help="stop after S seconds (in-flight answers get up to 15 s more)")
    stop.add_argument("--sessions", type=_pos_int, metavar="N", help="run N conversations to their end, then stop")
    p.add_argument("--timeout", type=_positive_float, default=120.0, metavar="S", help="per-request timeout (default 120)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(run=run)
    return p


def config_from_args(args: argparse.Namespace, url: str | None = None) -> LoadConfig:
    from contracts.config import ConfigError

    if args.turns[0] > args.turns[1]:
        raise ConfigError(f"--turns {args.turns[0]} {args.turns[1]}: MIN is larger than MAX")
    if args.max_tokens[0] > args.max_tokens[1]:
        raise ConfigError(f"--max-tokens {args.max_tokens[0]} {args.max_tokens[1]}: MIN is larger than MAX")
    if args.think_time[0] > args.think_time[1]:
        raise ConfigError(f"--think-time {args.think_time[0]} {args.think_time[1]}: MIN is larger than MAX")
    url = url or args.url
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url {url!r}: not an http(s) URL")
    scenarios = Path(getattr(args, "scenarios", None) or DATA_FILE)
    try:
        load_scenarios(scenarios, args.lang)
    except OSError as exc:
        raise ConfigError(f"--scenarios {scenarios}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--scenarios: {str(exc).splitlines()[0]}") from None
    return LoadConfig(
        url=url, sessions_per_second=args.sessions_per_second, turns=tuple(args.turns),
        stream_ratio=args.stream_ratio, duration=getattr(args, "duration", None),
        sessions=getattr(args, "sessions", None), feedback_ratio=args.feedback_ratio,
        negative_ratio=args.negative_ratio, abort_ratio=args.abort_ratio, pii_ratio=args.pii_ratio,
        think_time=tuple(args.think_time), max_tokens=tuple(args.max_tokens), api_key=args.api_key,
        model=args.model, seed=args.seed, lang=args.lang, max_concurrency=args.max_concurrency,
        timeout=getattr(args, "timeout", 120.0), scenarios_file=scenarios)


class ProgressPrinter:
    """One line on stderr: redrawn in place on a terminal, every 5 s otherwise."""

    def __init__(self, stream=None, every: float = 5.0, prefix: str = ""):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every
        self.prefix = prefix
        self._last = 0.0
        self._drawn = False

    def __call__(self, stats: LoadStats, force: bool = False, line: str | None = None) -> None:
        now = time.monotonic()
        text = self.prefix + (line if line is not None else stats.progress_line())
        if self.tty:
            self.stream.write("\r\x1b[2K" + text[: 200])
            self._drawn = True
        elif force or now - self._last >= self.every:
            self.stream.write(text + "\n")
            self._last = now
        self.stream.flush()

    def end(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    printer = None if args.quiet else ProgressPrinter()
    gen = LoadGenerator(cfg, on_progress=printer)

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, gen.stop)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
                pass
        return await gen.run()

    if printer:
        print(f"seekwatch loadgen: driving {cfg.base_url} "
              f"({cfg.sessions_per_second:g} sessions/s, {cfg.turns[0]}-{cfg.turns[1]} turns, "
              f"{cfg.stream_ratio:.0%} streamed); Ctrl-C to stop", file=sys.stderr, flush=True)
    summary = asyncio.run(main())
    if printer:
        printer.end()
    print(json.dumps(summary, ensure_ascii=False, indent=2) if args.json else format_summary(summary), flush=True)
    return 0 if summary["turns_answered"] + summary["aborted_by_user"] > 0 else 1  # the node answered


__all__ = ["LoadConfig", "LoadGenerator", "LoadStats", "add_parser", "add_arguments", "config_from_args",
           "format_summary", "load_scenarios", "plan_conversation", "run"]
