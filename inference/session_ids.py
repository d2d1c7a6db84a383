"""Session and request identifiers.

NextChat resends the whole history on every turn and sends no conversation id, so when the
client gives neither ``X-Session-Id`` nor OpenAI's ``user``, the session id is a stable
fingerprint of the conversation's opening (system prompt and first user message): every turn
of one conversation shares it, and two conversations that open differently do not.
"""
from __future__ import annotations

import hashlib
import re
import uuid
from typing import Iterable, Mapping

_SAFE = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


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


def session_id_for(headers: Mapping[str, str], user: str | None,
                   messages: Iterable[tuple[str, str]]) -> str:
    header = (headers.get("x-session-id") or "").strip()
    if header:
        return header if _SAFE.match(header) else "hs-" + hashlib.sha256(header.encode()).hexdigest()[:20]
    if user:
        return "user-" + hashlib.sha256(user.encode()).hexdigest()[:20]
    return conversation_fingerprint(messages)


def turn_index(messages: Iterable[tuple[str, str]]) -> int:
    """0 for the first user turn of a conversation, 1 for the second, …"""
    return max(sum(1 for role, _ in messages if role == "user") - 1, 0)
