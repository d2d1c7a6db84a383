"""WeCom (企业微信) group robot: markdown message; answers ``{"errcode": 0}``.

WeCom's markdown caps content at 4096 bytes; longer groups are cut with a note.
"""
from __future__ import annotations

from typing import Any

from .. import messages
from .base import DeliveryError, Receiver, Request, json_errcode

LIMIT = 4096


class WeComReceiver(Receiver):
    type = "wecom"

    def build(self, payload: dict[str, Any], now: float) -> Request:
        text = messages.markdown(payload, "wecom")
        if len(text.encode("utf-8")) > LIMIT:
            cut = text.encode("utf-8")[: LIMIT - 40].decode("utf-8", "ignore")
            text = cut + "\n…（已截断 truncated）"
        body: dict[str, Any] = {"msgtype": "markdown", "markdown": {"content": text}}
        return Request(self.url, body, self.headers(payload))

    def check(self, status: int, text: str) -> None:
        super().check(status, text)
        code = json_errcode(text, "errcode")
        if code not in (0, None):
            raise DeliveryError(f"WeCom errcode {code}: {text[:200]}")
