"""Receiver interface: a receiver is one module that owns everything about one chat tool.

A receiver class (a subclass of :class:`Receiver` in a module of this package) declares

* ``type``: the name configs use (``receivers: [{type: dingtalk, ...}]``);
* ``config_schema``: the JSON Schema of its own keys (merged into alertd's config schema, so
  a typo or a missing ``url`` is a one-line config error naming the key);
* ``build()``: its message format, one HTTP request per notification;
* ``check()``: which replies mean "accepted", which failures are **transient** (retried
  with the backoff of :mod:`monitor.alerting.delivery`) and which are **permanent** (sending
  the same request again cannot succeed: a bad signature, a revoked token, HTTP 4xx other
  than 408/429; not retried, counted as failed and logged once);
* ``alertmanager()``: how ``seekwatch rules export --format alertmanager`` expresses it.

Adding a chat tool means adding one module here; :mod:`monitor.alerting.receivers` finds it.

A receiver never retries by itself: :mod:`monitor.alerting.delivery` owns retries, backoff,
logging, counting and the exactly-once bookkeeping in the outbox. Every request carries the
header ``X-Seekwatch-Notification-Id`` (stable across retries) so a receiver can drop a
duplicate should one ever get through a crash between "accepted" and "marked sent".
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from contracts.retry import transient_http_status

#: the config keys every receiver has (alertd's config.schema.json ``$defs/receiver_common``)
COMMON_KEYS = ("type", "name", "headers", "severities")


class DeliveryError(Exception):
    """The receiver did not accept the notification; it is retried (a transient failure)."""

    permanent: ClassVar[bool] = False


class PermanentDeliveryError(DeliveryError):
    """The receiver refused the notification in a way a retry cannot fix (bad signature,
    unknown token, malformed request): it is not retried."""

    permanent = True


@dataclass
class Request:
    url: str
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass(frozen=True)
class ExportContext:
    """What a receiver's Alertmanager mapping may depend on, from alertd's config."""

    send_resolved: bool
    #: host:port of alertd's Alertmanager bridge, or None when it is off
    alertmanager_listen: str | None


class Receiver:
    type: ClassVar[str] = "base"
    #: JSON Schema of this receiver's own keys, besides ``COMMON_KEYS``
    config_schema: ClassVar[dict[str, Any]] = {"properties": {}}
    #: codes in a 2xx JSON reply (``errcode``/``code``) that mean "refused for good"
    permanent_codes: ClassVar[frozenset[Any]] = frozenset()

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.name: str = cfg.get("name") or self.type
        self.url: str | None = cfg.get("url")
        self.secret: str | None = cfg.get("secret")

    # -- the message -------------------------------------------------------------------------
    def build(self, payload: dict[str, Any], now: float) -> Request:
        raise NotImplementedError

    def headers(self, payload: dict[str, Any]) -> dict[str, str]:
        h = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "seekwatch-alertd",
             "X-Seekwatch-Notification-Id": payload["id"]}
        h.update(self.cfg.get("headers") or {})
        return h

    # -- the reply ---------------------------------------------------------------------------
    def check(self, status: int, text: str) -> None:
        """Raise unless the reply means "accepted": :class:`DeliveryError` for a failure worth
        retrying (408, 429, 5xx), :class:`PermanentDeliveryError` for any other non-2xx."""
        if 200 <= status < 300:
            return
        error = DeliveryError if transient_http_status(status) else PermanentDeliveryError
        raise error(f"HTTP {status}: {text[:200]}")

    def check_code(self, code: Any, what: str, text: str) -> None:
        """A chat API's own status code in an HTTP 200 reply: 0 (or none) is success, one of
        ``permanent_codes`` a permanent failure, anything else (rate limits, server trouble)
        transient."""
        if code in (0, None):
            return
        error = PermanentDeliveryError if code in self.permanent_codes else DeliveryError
        raise error(f"{what} {code}: {text[:200]}")

    def send(self, client: Any, payload: dict[str, Any], now: float) -> None:
        """POST with an ``httpx.Client``; raises :class:`DeliveryError` on any failure (a
        connection error is transient)."""
        import httpx

        req = self.build(payload, now)
        try:
            r = client.post(req.url, content=json.dumps(req.body, ensure_ascii=False).encode("utf-8"),
                            headers=req.headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
        self.check(r.status_code, r.text)

    # -- Alertmanager ------------------------------------------------------------------------
    @classmethod
    def alertmanager(cls, rc: dict[str, Any], ctx: ExportContext) -> dict[str, Any] | None:
        """The receiver-type part of an Alertmanager receiver entry (e.g. ``{"slack_configs":
        [...]}``), or None when Alertmanager cannot express it."""
        return None

    @classmethod
    def alertmanager_note(cls, rc: dict[str, Any]) -> str:
        """Why :meth:`alertmanager` gave None, for the exported file's header."""
        return (f"receiver {rc['name']!r} ({cls.type}) left out: Alertmanager has no native {cls.type} integration"
                " — set alertmanager_listen so alertd bridges it (see docs/alerts.md), or keep alertd for it")


class BridgedReceiver(Receiver):
    """A chat tool Alertmanager has no integration for: exported as a webhook to alertd's
    Alertmanager bridge (``alertmanager_listen``), which signs and formats for the tool."""

    @classmethod
    def alertmanager(cls, rc: dict[str, Any], ctx: ExportContext) -> dict[str, Any] | None:
        if not ctx.alertmanager_listen:
            return None
        return {"webhook_configs": [{"url": f"http://{ctx.alertmanager_listen}/alertmanager/{rc['name']}",
                                     "send_resolved": ctx.send_resolved}]}


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


#: schema fragments shared by several receivers
URL = {"$ref": "#/$defs/url"}
SECRET = {"type": "string", "minLength": 1}
