"""Generic webhook in Alertmanager's webhook payload format (version 4).

Anything that already consumes Alertmanager webhooks (prometheus-webhook-dingtalk, PagerDuty
bridges, custom scripts) works unchanged. Labels add ``alertname`` (CamelCase rule name) and
``instance`` (= node); annotations carry the bilingual summary and description. Failures
follow HTTP: 408, 429 and 5xx are retried, other 4xx are permanent. The export maps it to
Alertmanager's own ``webhook_configs``.
"""
from __future__ import annotations

from typing import Any

from .. import messages
from ..rules import ALERTNAMES
from .base import URL, ExportContext, Receiver, Request



def am_alert(a: dict[str, Any], status: str, dashboard_url: str | None) -> dict[str, Any]:
    lab = dict(a["labels"])
    lab["alertname"] = ALERTNAMES.get(lab.get("rule", ""), lab.get("rule", "SeekwatchAlert"))
    lab.setdefault("instance", lab.get("node", ""))
    zh, en = messages.comparison(a)
    zt, et = messages.RULE_TITLES.get(lab.get("rule", ""), ("", ""))
    ann = {"summary": f"{zt} / {et}: {lab.get('node', '')}", "description": f"{zh}\n{en}",
           "value": "" if a.get("value") is None else f"{a['value']:g}",
           "threshold": "" if a.get("threshold") is None else f"{a['threshold']:g}"}
    d = a.get("detail") or {}
    if d.get("window") is not None:
        ann["window_seconds"] = f"{float(d['window']):g}"
    for k in ("metric", "quantile", "instances"):
        if d.get(k) is not None:
            ann[k] = str(d[k])
    if dashboard_url:
        ann["dashboard"] = dashboard_url
    return {
        "status": status,
        "labels": {k: str(v) for k, v in lab.items()},
        "annotations": ann,
        "startsAt": messages.iso(a.get("starts_at")),
        "endsAt": messages.iso(a.get("ends_at")),
        "generatorURL": dashboard_url or "",
        "fingerprint": a.get("fingerprint", ""),
    }


def common(dicts: list[dict[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    out = dict(dicts[0])
    for d in dicts[1:]:
        out = {k: v for k, v in out.items() if d.get(k) == v}
    return out


class WebhookReceiver(Receiver):
    type = "webhook"
    config_schema = {"required": ["url"], "properties": {"url": URL}}

    @classmethod
    def alertmanager(cls, rc: dict[str, Any], ctx: ExportContext) -> dict[str, Any] | None:
        return {"webhook_configs": [{"url": rc["url"], "send_resolved": ctx.send_resolved}]}

    def build(self, payload: dict[str, Any], now: float) -> Request:
        status = payload["status"]
        alerts = [am_alert(a, status, payload.get("dashboard_url")) for a in payload["alerts"]]
        body = {
            "version": "4",
            "groupKey": payload["group_key"],
            "truncatedAlerts": 0,
            "status": status,
            "receiver": self.name,
            "groupLabels": payload.get("group_labels") or {},
            "commonLabels": common([a["labels"] for a in alerts]),
            "commonAnnotations": common([a["annotations"] for a in alerts]),
            "externalURL": payload.get("dashboard_url") or "",
            "alerts": alerts,
        }
        return Request(self.url, body, self.headers(payload))
