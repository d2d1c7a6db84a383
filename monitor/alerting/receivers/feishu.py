"""Feishu / Lark custom bot: interactive card, signed.

With a ``secret`` (签名校验) the body carries ``timestamp`` (seconds, as a string) and
``sign`` = base64(HMAC-SHA256(key=f"{timestamp}\\n{secret}", msg=b"")) — Feishu's documented
scheme, where the string-to-sign is the HMAC *key*. Feishu answers ``{"code": 0}``
(older bots ``{"StatusCode": 0}``). A bad signature (19021), a blocked IP (19022), a
missing keyword (19024) or an unknown bot or token (19001, 19002) is permanent; other codes
(e.g. 11232 rate limited) are retried.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from .. import messages
from .base import SECRET, URL, BridgedReceiver, Request, json_errcode


def feishu_sign(secret: str, timestamp_s: int) -> str:
    key = f"{timestamp_s}\n{secret}".encode("utf-8")
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


class FeishuReceiver(BridgedReceiver):
    type = "feishu"
    config_schema = {"required": ["url"], "properties": {"url": URL, "secret": SECRET}}
    permanent_codes = frozenset({19001, 19002, 19021, 19022, 19024})

    def build(self, payload: dict[str, Any], now: float) -> Request:
        resolved = payload["status"] == "resolved"
        sev = payload["alerts"][0]["labels"].get("severity", "warning")
        template = "green" if resolved else {"critical": "red", "warning": "orange"}.get(sev, "blue")
        elements: list[dict[str, Any]] = [
            {"tag": "div", "text": {"tag": "lark_md", "content": messages.markdown(payload)}}]
        if payload.get("dashboard_url"):
            elements.append({"tag": "action", "actions": [{
                "tag": "button", "type": "default", "url": payload["dashboard_url"],
                "text": {"tag": "plain_text", "content": "仪表盘 Dashboard"}}]})
        body: dict[str, Any] = {
            "msg_type": "interactive",
            "card": {
                "config": {"wide_screen_mode": True},
                "header": {"template": template, "title": {"tag": "plain_text", "content": messages.title(payload)}},
                "elements": elements,
            },
        }
        if self.secret:
            ts = int(now)
            body = {"timestamp": str(ts), "sign": feishu_sign(self.secret, ts), **body}
        return Request(self.url, body, self.headers(payload))

    def check(self, status: int, text: str) -> None:
        super().check(status, text)
        self.check_code(json_errcode(text, "code", "StatusCode"), "Feishu code", text)
