"""WeCom (企业微信) group robot: markdown message; answers ``{"errcode": 0}``.

WeCom's markdown caps content at 4096 bytes; longer groups are cut with a note. An invalid
webhook URL or key (93000, 93004) or a rejected message (40008, 40058) is permanent; other
errcodes (e.g. 45009 rate limited) are retried.
"""
from __future__ import annotations

from typing import Any

from .. import messages
from .base import URL, BridgedReceiver, Request, json_errcode

LIMIT = 4096


class WeComReceiver(BridgedReceiver):
    type = "wecom"
    config_schema = {"required": ["url"], "properties": {"url": URL}}
    permanent_codes = frozenset({93000, 93004, 40008, 40058})
    markdown = messages.MarkdownStyle(line=lambda k, v: f"> {k}: {v}")

    def build(self, payload: dict[str, Any], now: float) -> Request:
        text = messages.markdown(payload, self.markdown)
        if len(text.encode("utf-8")) > LIMIT:
            cut = text.encode("utf-8")[: LIMIT - 40].decode("utf-8", "ignore")
            text = cut + "\n…（已截断 truncated）"
        body: dict[str, Any] = {"msgtype": "markdown", "markdown": {"content": text}}
        return Request(self.url, body, self.headers(payload))

    def check(self, status: int, text: str) -> None:
        super().check(status, text)
        self.check_code(json_errcode(text, "errcode"), "WeCom errcode", text)
