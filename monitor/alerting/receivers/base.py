"""Receiver interface: turn one notification payload into one HTTP request, and judge the reply.

A receiver never retries by itself: :mod:`monitor.alerting.delivery` owns retries, backoff,
logging, counting and the exactly-once bookkeeping in the outbox. Every request carries the
header ``X-Seekwatch-Notification-Id`` (stable across retries) so a receiver can drop a
duplicate should one ever get through a crash between "accepted" and "marked sent".
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class DeliveryError(Exception):
    """The receiver did not accept the notification; it will be retried."""


@dataclass
class Request:
    url: str
    body: dict[str, Any]
    headers: dict[str, str]


class Receiver:
    type = "base"

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.name: str = cfg.get("name") or self.type
        self.url: str | None = cfg.get("url")
        self.secret: str | None = cfg.get("secret")

    def build(self, payload: dict[str, Any], now: float) -> Request:
        raise NotImplementedError

    def check(self, status: int, text: str) -> None:
        """Raise :class:`DeliveryError` unless the reply means "accepted"."""
        if not 200 <= status < 300:
            raise DeliveryError(f"HTTP {status}: {text[:200]}")

    def headers(self, payload: dict[str, Any]) -> dict[str, str]:
        h = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "seekwatch-alertd",
             "X-Seekwatch-Notification-Id": payload["id"]}
        h.update(self.cfg.get("headers") or {})
        return h

    def send(self, client: Any, payload: dict[str, Any], now: float) -> None:
        """POST with an ``httpx.Client``; raises :class:`DeliveryError` on any failure."""
        import httpx

        req = self.build(payload, now)
        try:
            r = client.post(req.url, content=json.dumps(req.body, ensure_ascii=False).encode("utf-8"),
                            headers=req.headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
        self.check(r.status_code, r.text)


def json_errcode(text: str, *keys: str) -> Any:
    """First of ``keys`` present in a JSON reply (DingTalk/WeCom ``errcode``, Feishu ``code``)."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    for k in keys:
        if k in body:
            return body[k]
    return None
