"""What a request is for: the user's turn (``chat``), or a client's background request.

NextChat sends, besides the user's turns, a title request and a memory-summary request that
carry the conversation. Logged as turns they would count twice in completion and in the
conversation's turns; so each request gets a ``request_kind`` (``contracts.metrics.REQUEST_KINDS``)
recognised from the client's prompt templates in ``contracts/defaults/request-kinds.yaml``,
every UI language the client ships. Matching is exact (after collapsing whitespace) on the
*last* message, where the client puts its instruction, so a user who merely quotes a template
inside a longer message is still a ``chat`` turn.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from contracts.config import check_against_schema, load_yaml_config
from contracts.defaults import default_config_path
from contracts.metrics import REQUEST_KINDS

CHAT, TITLE, SUMMARY, OTHER = REQUEST_KINDS

#: JSON Schema of request-kinds.yaml.
REQUEST_KINDS_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["version", "clients"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": 1},
        "clients": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "templates"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "templates": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["lang", "title", "summary", "history_prefix"],
                    "additionalProperties": False,
                    "properties": {
                        "lang": {"type": "string", "minLength": 1},
                        "title": {"type": "string", "minLength": 10},
                        "summary": {"type": "string", "minLength": 10},
                        "history_prefix": {"type": "string", "minLength": 3},
                    }}},
            }}},
    },
}


def normalise(text: str) -> str:
    """Runs of whitespace become one space; ends trimmed."""
    return " ".join(text.split())


@dataclass(frozen=True)
class RequestKinds:
    titles: frozenset[str]
    summaries: frozenset[str]
    history_prefixes: tuple[str, ...]

    @classmethod
    def from_config(cls, data: dict, source: str = "request-kinds") -> "RequestKinds":
        check_against_schema(data, REQUEST_KINDS_SCHEMA, source)
        templates = [t for c in data["clients"] for t in c["templates"]]
        # longest prefix first, so a prefix that extends another one wins
        prefixes = sorted({normalise(t["history_prefix"]) for t in templates}, key=len, reverse=True)
        return cls(frozenset(normalise(t["title"]) for t in templates),
                   frozenset(normalise(t["summary"]) for t in templates), tuple(prefixes))

    @classmethod
    def from_yaml(cls, path: str | Path | None = None) -> "RequestKinds":
        """Load and schema-check a templates file (default: the shipped request-kinds.yaml);
        :class:`~contracts.config.ConfigError` with one line when it is unusable."""
        p = Path(path) if path else default_config_path("request-kinds")
        return cls.from_config(load_yaml_config(p), str(p))

    def classify(self, messages: Sequence[tuple[str, str]]) -> str:
        """``title``, ``summary`` or ``chat`` for a chat request's ``(role, text)`` messages."""
        if not messages:
            return OTHER
        role, text = messages[-1]
        if role == "user" and normalise(text) in self.titles:
            return TITLE
        if role in ("system", "developer") and normalise(text) in self.summaries:
            return SUMMARY
        return CHAT

    def memory_text(self, role: str, text: str) -> str | None:
        """The earlier summary reply inside a client's memory system message, else None."""
        if role not in ("system", "developer"):
            return None
        t = normalise(text)
        for prefix in self.history_prefixes:
            if t.startswith(prefix):
                return t[len(prefix):].strip()
        return None


_DEFAULT: RequestKinds | None = None


def default_request_kinds() -> RequestKinds:
    """The recogniser built from the shipped request-kinds.yaml (loaded once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = RequestKinds.from_yaml()
    return _DEFAULT
