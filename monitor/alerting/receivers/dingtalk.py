"""DingTalk custom robot (自定义机器人): markdown message, signed.

With a ``secret`` (加签), the URL gets ``timestamp`` (ms) and ``sign`` =
urlencode(base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}"))). DingTalk answers
HTTP 200 with ``{"errcode": 0}``. A bad signature, keyword or IP (310000), an unknown or
disabled robot (300001, 400101, 400102, 400106) cannot succeed on a retry: permanent. Other
errcodes (e.g. 130101 / 410100 sending too fast) are retried.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any
from urllib.parse import quote_plus

from .. import messages
from .base import SECRET, URL, BridgedReceiver, Request, json_errcode


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """The (not yet URL-encoded) ``sign`` value."""
    to_sign = f"{timestamp_ms}\n{secret}".encode("utf-8")
    digest = hmac.new(secret.encode("utf-8"), to_sign, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


class DingTalkReceiver(BridgedReceiver):
    type = "dingtalk"
    config_schema = {"required": ["url"], "properties": {"url": URL, "secret": SECRET, "mention_all": {"type": "boolean"}}}
    permanent_codes = frozenset({310000, 300001, 400101, 400102, 400106})
    markdown = messages.MarkdownStyle(heading=lambda t: f"### {t}", separator="\n\n")

    def build(self, payload: dict[str, Any], now: float) -> Request:
        url = self.url
        if self.secret:
            ts = int(now * 1000)
            url += ("&" if "?" in url else "?") + f"timestamp={ts}&sign={quote_plus(dingtalk_sign(self.secret, ts))}"
        body: dict[str, Any] = {
            "msgtype": "markdown",
            "markdown": {"title": messages.title(payload), "text": messages.markdown(payload, self.markdown)},
        }
        if self.cfg.get("mention_all"):
            body["at"] = {"isAtAll": True}
        return Request(url, body, self.headers(payload))

    def check(self, status: int, text: str) -> None:
        super().check(status, text)
        self.check_code(json_errcode(text, "errcode"), "DingTalk errcode", text)
