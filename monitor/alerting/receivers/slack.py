"""Slack incoming webhook: ``{"text", "blocks"}`` with mrkdwn; Slack answers ``ok``.

Slack answers a bad or revoked hook with a 4xx (403 ``invalid_token``, 404 ``no_team``,
410 ``channel_is_archived``): permanent. 429 and 5xx are retried. Alertmanager has a native
Slack integration, so the export maps it to ``slack_configs``.
"""
from __future__ import annotations

from typing import Any

from .. import messages
from .base import URL, ExportContext, Receiver, Request


class SlackReceiver(Receiver):
    type = "slack"
    config_schema = {"required": ["url"], "properties": {"url": URL}}
    markdown = messages.MarkdownStyle(bold=lambda s: f"*{s}*", link=lambda url, text: f"<{url}|{text}>")

    def build(self, payload: dict[str, Any], now: float) -> Request:
        text = messages.markdown(payload, self.markdown)
        body = {
            "text": messages.title(payload),  # notification / fallback text
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}],
        }
        return Request(self.url, body, self.headers(payload))

    @classmethod
    def alertmanager(cls, rc: dict[str, Any], ctx: ExportContext) -> dict[str, Any] | None:
        return {"slack_configs": [{
            "api_url": rc["url"], "send_resolved": ctx.send_resolved,
            "title": '{{ if eq .Status "firing" }}🔴 [告警 FIRING]{{ else }}✅ [已恢复 RESOLVED]{{ end }} '
                     "{{ .CommonAnnotations.summary }}",
            "text": "{{ range .Alerts }}{{ .Annotations.description }}\n开始于 Since: {{ .StartsAt }}\n{{ end }}",
        }]}
