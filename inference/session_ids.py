"""Session and request identifiers, and the conversation a request belongs to.

A request's session is, in this order:

1. its ``X-Session-Id`` header;
2. a digest of OpenAI's ``user`` field (``user-<hex>``; the raw value may be an e-mail address);
3. the session of an earlier reply of this node that the request's history contains
   (:class:`ConversationLinks`);
4. ``fp-<hex>``, a fingerprint of the conversation's opening (system messages and the first
   user message).

Rule 3 exists because clients that send no id do not resend the whole history: NextChat
sends the last 4 messages and, once the conversation is long, a system message carrying a
summary of what came before. The opening (rule 4) then changes mid-conversation, but the
window always holds at least one of the node's own earlier replies, and the memory message
holds a reply of the node too (the summary). So the node remembers, for a bounded time and
number of entries, a digest of each reply it produced with the message it answered (and the
reply before that), keyed to (session, turn); a request whose history contains such an
exchange continues that session at the next turn. The map lives in the node's memory: a restart, or a turn routed to another
replica, falls back to rule 4 (docs/node.md, "Identifiers").
"""
from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from inference.request_kinds import CHAT, RequestKinds, normalise

_SAFE = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")

#: Linkage memory: at most this many entries per table (least recently used go first), each for
#: at most this long. Two entries a reply (full and short key): the 50,000 latest replies,
#: ~27 MB measured, plus the last turn of up to 100,000 sessions.
LINK_MAX_ENTRIES = 100_000
LINK_TTL_S = 24 * 3600.0
#: Assistant messages of one request looked up, newest first (a client that resends a long
#: history needs only its latest replies to be found).
LINK_SCAN_MESSAGES = 32


def new_request_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def conversation_fingerprint(messages: Iterable[tuple[str, str]]) -> str:
    """``fp-`` + 20 hex chars over the system messages and the first user message."""
    h = hashlib.sha256()
    for role, text in messages:
        if role in ("system", "developer") or role == "user":
            h.update(role.encode())
            h.update(b"\0")
            h.update(text.encode("utf-8", "replace"))
            h.update(b"\0")
        if role == "user":
            break
    return "fp-" + h.hexdigest()[:20]


def explicit_session_id(headers: Mapping[str, str], user: str | None) -> str | None:
    """Rules 1 and 2: the id the client gave, or None."""
    header = (headers.get("x-session-id") or "").strip()
    if header:
        return header if _SAFE.match(header) else "hs-" + hashlib.sha256(header.encode()).hexdigest()[:20]
    if user:
        return "user-" + hashlib.sha256(user.encode()).hexdigest()[:20]
    return None


def session_id_for(headers: Mapping[str, str], user: str | None,
                   messages: Iterable[tuple[str, str]]) -> str:
    """Rules 1, 2 and 4 (no linkage): what the node can tell from one request alone."""
    return explicit_session_id(headers, user) or conversation_fingerprint(messages)


def turn_index(messages: Iterable[tuple[str, str]]) -> int:
    """0 for the first user turn of a conversation, 1 for the second, … (whole history sent)."""
    return max(sum(1 for role, _ in messages if role == "user") - 1, 0)


def reply_text(text: str) -> str:
    """A reply as the node compares it: without quoted lines (``> …``, where clients put the
    reasoning they show) and blank lines, whitespace collapsed. NextChat's DeepSeek provider
    strips those lines from the replies it sends back, so both sides are compared the same way."""
    return normalise("\n".join(ln for ln in text.split("\n") if not ln.startswith("> ") and ln.strip()))


def _digest(*parts: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.encode("utf-8", "replace"))
        h.update(b"\0")
    return h.digest()


class ConversationLinks:
    """Bounded memory of the node's replies: digest → (session, turn), least recently used
    dropped beyond ``max_entries``, forgotten after ``ttl_s``. Event-loop only (no lock)."""

    def __init__(self, max_entries: int = LINK_MAX_ENTRIES, ttl_s: float = LINK_TTL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.max_entries, self.ttl_s, self.clock = max_entries, ttl_s, clock
        self._replies: OrderedDict[bytes, tuple[str, int, float]] = OrderedDict()
        #: highest chat turn seen per session, for requests linked through a summary only
        self._last_turn: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._replies)

    def _put(self, table: OrderedDict, key, value) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self.max_entries:
            table.popitem(last=False)

    def _get(self, table: OrderedDict, key):
        hit = table.get(key)
        if hit is None:
            return None
        if hit[-1] < self.clock():
            del table[key]
            return None
        table.move_to_end(key)
        return hit

    def remember_reply(self, answered: str, reply: str, session_id: str, turn: int,
                       previous_reply: str = "") -> None:
        """A chat turn's reply, keyed with the message it answered (the request's last one)
        and with the assistant message just before that (``""`` when there was none).

        Two keys, because the same exchange happens in many conversations (a customer-service
        bot answers "How do I return an order?" the same way for everyone): the *full* key
        (previous reply, question, reply) tells those conversations apart; the *short* key
        (question, reply) is used only for a reply whose predecessor the client did not send
        (the oldest pair of NextChat's window), so a stopped newest reply does not break the chain."""
        r = reply_text(reply)
        if r:
            until = self.clock() + self.ttl_s
            a = normalise(answered)
            self._put(self._replies, _digest("full", reply_text(previous_reply), a, r), (session_id, turn, until))
            self._put(self._replies, _digest("short", a, r), (session_id, turn, until))

    def remember_summary(self, summary: str, session_id: str, turn: int) -> None:
        """A summary request's reply: the client sends it back inside its memory message."""
        r = normalise(summary)
        if r:
            self._put(self._replies, _digest("summary", r), (session_id, turn, self.clock() + self.ttl_s))

    def note_turn(self, session_id: str, turn: int) -> None:
        last = self._get(self._last_turn, session_id)
        if last is None or turn > last[0]:
            self._put(self._last_turn, session_id, (turn, self.clock() + self.ttl_s))

    def last_turn(self, session_id: str) -> int | None:
        hit = self._get(self._last_turn, session_id)
        return None if hit is None else hit[0]

    def find(self, messages: Sequence[tuple[str, str]], kinds: RequestKinds,
             chat: bool = True) -> tuple[str, int] | None:
        """(session, turn index) that a request with this history continues, or None.

        The newest of the node's replies found in the history gives the session; the turn is
        that reply's turn plus the user messages after it. Failing that, an earlier summary
        reply in a memory message gives the session, and the turn follows the last one seen
        (``chat``) or is that one (a background request)."""
        scanned = 0
        for i in range(len(messages) - 1, 0, -1):
            role, text = messages[i]
            if role != "assistant":
                continue
            scanned += 1
            if scanned > LINK_SCAN_MESSAGES:
                break
            answered, reply = normalise(messages[i - 1][1]), reply_text(text)
            before = messages[i - 2] if i >= 2 else None
            previous = reply_text(before[1]) if before is not None and before[0] == "assistant" else ""
            hit = self._get(self._replies, _digest("full", previous, answered, reply))
            if hit is None and not previous:  # the predecessor is not in this request
                hit = self._get(self._replies, _digest("short", answered, reply))
            if hit is not None:
                later_users = sum(1 for r, _ in messages[i + 1:] if r == "user")
                return hit[0], hit[1] + later_users
        for role, text in messages:
            memory = kinds.memory_text(role, text)
            if memory:
                hit = self._get(self._replies, _digest("summary", memory))
                if hit is not None:
                    last = self.last_turn(hit[0])
                    base = hit[1] if last is None else max(hit[1], last)
                    return hit[0], base + (1 if chat else 0)
        return None


@dataclass(frozen=True)
class Identity:
    session_id: str
    turn_index: int
    request_kind: str
    linked: bool = False


def identify(headers: Mapping[str, str], user: str | None, messages: Sequence[tuple[str, str]],
             kinds: RequestKinds, links: ConversationLinks | None) -> Identity:
    """Session, turn and kind of one chat request (rules in the module docstring).

    A background request (``title``, ``summary``) belongs to the conversation it carries and
    takes the turn index of the chat turn it follows, so it never advances the count; its
    template message is not part of the conversation."""
    kind = kinds.classify(messages)
    conversation = list(messages) if kind == CHAT else list(messages[:-1])
    explicit = explicit_session_id(headers, user)
    found = links.find(conversation, kinds, kind == CHAT) if links is not None else None
    if kind == CHAT:
        counted = turn_index(conversation)
    else:  # the user messages before the template: the chat turns it follows
        counted = max(sum(1 for r, _ in conversation if r == "user") - 1, 0)
    if explicit:
        session, turn, linked = explicit, counted, False
        if found is not None and found[0] == explicit:
            turn, linked = found[1], True
    elif found is not None:
        session, turn, linked = found[0], found[1], True
    else:
        session, turn, linked = conversation_fingerprint(conversation), counted, False
    return Identity(session, turn, kind, linked)
