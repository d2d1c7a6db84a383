"""Slack incoming webhook: ``{"text", "blocks"}`` with mrkdwn; Slack answers ``ok``."""
from __future__ import annotations

from typing import Any

from .. import messages
from .base import Receiver, Request


class SlackReceiver(Receiver):
    type = "slack"

    def build(self, payload: dict[str, Any], now: float) -> Request:
        text = messages.markdown(payload, "slack")
        body = {
            "text": messages.title(payload),  # notification / fallback text
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}],
        }
        return Request(self.url, body, self.headers(payload))
