"""The two quality signals, defined once: turn completion and dialogue completion.

docs/quality.md states the definitions in words; this module is them in code. The node's
conversation tracker (``inference.conversations``) applies them as turns and feedback
arrive, the dashboard's sources and the tests apply them to the raw session and feedback
records, and alertd / the exported Prometheus rules read the counters the node derives
from them, so every place that shows a completion rate computes the same number.

* **Turn completion** = completed ``chat`` turns / ``chat`` turns. A turn is *completed*
  when its status is ``completed`` and no thumbs-down names its ``request_id``. A
  thumbs-down counts against the turn it rates and only that turn: one on a turn that was
  already ``truncated`` or ``aborted`` changes nothing (that turn is not completed either
  way), and two on one turn count once. Background requests (``title``, ``summary``,
  ``other``) are not turns of the user's dialogue.
* **Dialogue completion** = completed conversations / conversations that *ended*. A
  conversation is the run of ``chat`` turns of one ``session_id`` with no gap of
  ``idle_s`` or more between one turn's end and the next; it *ends* ``idle_s`` after its
  last turn ended (nobody is waiting on it any more). It is *completed* when its last turn
  is completed, and that turn drew no thumbs-down before the conversation ended: the
  dialogue is judged by how it ended, so a failed turn the user recovered from (a retry, a
  rephrased question) does not fail it — turn completion counts that failure.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

CHAT = "chat"
#: Values of the session record's ``request_kind`` (and of the metrics' label).
REQUEST_KINDS = ("chat", "title", "summary", "other")
#: A conversation with no chat turn for this long has ended (``seekwatch serve
#: --conversation-idle``; the dashboard's ``--conversation-idle`` must match the nodes').
DEFAULT_CONVERSATION_IDLE_S = 300.0
#: Outcomes of ``seekwatch_conversations_ended_total{outcome}``.
CONVERSATION_OUTCOMES = ("completed", "incomplete")


def request_kind(record: Mapping[str, Any]) -> str:
    """A record's kind; records written before kinds existed have none and were chat turns."""
    return record.get("request_kind") or CHAT


def is_chat(record: Mapping[str, Any]) -> bool:
    return request_kind(record) == CHAT


def turn_completed(status: str | None, rated_down: bool) -> bool:
    return status == "completed" and not rated_down


@dataclass
class ConversationSpan:
    session_id: str
    started_at: float            # end of its first turn (epoch seconds)
    last_at: float               # end of its last turn
    last_request_id: str | None
    last_status: str | None
    turns: int = 1

    def ends_at(self, idle_s: float) -> float:
        return self.last_at + idle_s

    def completed(self, down_at: Mapping[str, float], idle_s: float) -> bool:
        """Last turn completed and not rated down before the conversation ended."""
        t = down_at.get(self.last_request_id or "")
        return turn_completed(self.last_status, t is not None and t < self.ends_at(idle_s))


def conversations(turns: Iterable[tuple[str, float, str | None, str | None]], idle_s: float) -> list[ConversationSpan]:
    """Split chat turns ``(session_id, ended_at, request_id, status)`` into conversations."""
    open_: dict[str, ConversationSpan] = {}
    out: list[ConversationSpan] = []
    for sid, t, rid, status in sorted(turns, key=lambda x: x[1]):
        c = open_.get(sid)
        if c is not None and t - c.last_at < idle_s:
            c.last_at, c.last_request_id, c.last_status = t, rid, status
            c.turns += 1
            continue
        c = open_[sid] = ConversationSpan(sid, t, t, rid, status)
        out.append(c)
    return out


def epoch_s(ts: str | float | _dt.datetime) -> float:
    """``@timestamp`` (RFC 3339 text, a datetime or epoch seconds) as epoch seconds."""
    if isinstance(ts, (int, float)):
        return float(ts)
    if isinstance(ts, str):
        ts = _dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=_dt.timezone.utc)
    return ts.timestamp()


@dataclass
class Recount:
    """Both signals over ``[start, end)``, from the raw records (the reference every source is tested against)."""

    turns: int
    turns_completed: int
    conversations_ended: int
    conversations_completed: int

    @property
    def turn_completion(self) -> float | None:
        return self.turns_completed / self.turns if self.turns else None

    @property
    def dialogue_completion(self) -> float | None:
        return self.conversations_completed / self.conversations_ended if self.conversations_ended else None


def first_thumbs_down(feedback: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """request_id -> time of its first thumbs-down (feedback on a whole session rates no turn)."""
    out: dict[str, float] = {}
    for f in feedback:
        rid = f.get("request_id")
        if f.get("rating") == "down" and rid:
            t = epoch_s(f["@timestamp"])
            if rid not in out or t < out[rid]:
                out[rid] = t
    return out


def recount(sessions: Iterable[Mapping[str, Any]], feedback: Iterable[Mapping[str, Any]], start: float, end: float,
            idle_s: float = DEFAULT_CONVERSATION_IDLE_S) -> Recount:
    """Turns that ended in ``[start, end)`` and conversations that ended in ``[start, end)``.

    A thumbs-down counts against its turn whenever it came (the dashboards' turn completion);
    for a conversation only when it came before the conversation ended.
    """
    down_at = first_thumbs_down(feedback)
    chat = [(r["session_id"], epoch_s(r["@timestamp"]), r.get("request_id"), r.get("status"))
            for r in sessions if is_chat(r)]
    in_w = [c for c in chat if start <= c[1] < end]
    done = sum(1 for _, _, rid, st in in_w if turn_completed(st, (rid or "") in down_at))
    ended = [c for c in conversations(chat, idle_s) if start <= c.ends_at(idle_s) < end]
    return Recount(len(in_w), done, len(ended), sum(1 for c in ended if c.completed(down_at, idle_s)))
