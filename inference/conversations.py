"""The node's side of the two quality signals (definitions: ``contracts.signals``).

Turn completion needs to know which thumbs-down rate a *completed* turn: a counter of all
thumbs-downs would subtract those on truncated or aborted turns a second time. Dialogue
completion needs to know when a conversation ended. Both need memory of recent turns, which
only the node has while traffic flows, so the node keeps it here and exports two counters:

* ``seekwatch_completed_turns_rated_down_total``: completed ``chat`` turns that drew a
  thumbs-down, counted once per turn at the first one;
* ``seekwatch_conversations_ended_total{outcome="completed|incomplete"}``: conversations
  closed after ``idle_s`` without a chat turn, by outcome.

Conversations are closed lazily — on the next turn, feedback or scrape — so a scrape always
sees every conversation whose idle time has passed. What this memory cannot see, and the
dashboards' recount from the log can: feedback on a turn it has forgotten (more than
``remember`` turns ago, or before a restart), and conversations open when the node stopped.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from contracts.signals import CHAT, DEFAULT_CONVERSATION_IDLE_S, turn_completed


@dataclass
class _Turn:
    session_id: str
    status: str
    rated_down: bool = False


@dataclass
class _Open:
    last_at: float
    last_request_id: str
    last_status: str
    last_down: bool = False


class ConversationTracker:
    def __init__(self, on_rated_down: Callable[[], None], on_ended: Callable[[str], None],
                 idle_s: float = DEFAULT_CONVERSATION_IDLE_S, remember: int = 200_000,
                 clock: Callable[[], float] = time.time):
        self.idle_s = float(idle_s)
        self.remember = remember
        self._on_rated_down = on_rated_down
        self._on_ended = on_ended
        self._clock = clock
        self._turns: OrderedDict[str, _Turn] = OrderedDict()
        self._open: dict[str, _Open] = {}
        self._lock = threading.Lock()

    def on_turn(self, session_id: str, request_id: str, status: str, ended_at: float,
                request_kind: str | None = None) -> None:
        if (request_kind or CHAT) != CHAT:
            return
        with self._lock:
            self._close_idle(ended_at)
            self._turns[request_id] = _Turn(session_id, status)
            if len(self._turns) > self.remember:
                self._turns.popitem(last=False)
            c = self._open.get(session_id)
            if c is not None and ended_at - c.last_at < self.idle_s:
                if ended_at >= c.last_at:   # concurrent turns of one session: the later end is the last turn
                    c.last_at, c.last_request_id, c.last_status, c.last_down = ended_at, request_id, status, False
            else:
                if c is not None:  # an idle one not yet closed (turns may arrive slightly out of order)
                    self._end(c)
                self._open[session_id] = _Open(ended_at, request_id, status)

    def on_feedback(self, request_id: str | None, rating: str, at: float) -> None:
        """A thumbs-down on a turn this node remembers; other feedback changes neither signal."""
        if rating != "down" or not request_id:
            return
        with self._lock:
            self._close_idle(at)
            t = self._turns.get(request_id)
            if t is None or t.rated_down:
                return
            t.rated_down = True
            if t.status == "completed":
                self._on_rated_down()
            c = self._open.get(t.session_id)
            if c is not None and c.last_request_id == request_id:
                c.last_down = True

    def close_idle(self, now: float | None = None) -> None:
        """Close every conversation idle for ``idle_s`` (called before each scrape)."""
        with self._lock:
            self._close_idle(self._clock() if now is None else now)

    def open_conversations(self) -> int:
        return len(self._open)

    def _close_idle(self, now: float) -> None:
        limit = now - self.idle_s
        for sid in [s for s, c in self._open.items() if c.last_at <= limit]:
            self._end(self._open.pop(sid))

    def _end(self, c: _Open) -> None:
        self._on_ended("completed" if turn_completed(c.last_status, c.last_down) else "incomplete")
