"""Alertmanager → chat bridge: alertd accepts Alertmanager webhooks and forwards them through
its own receivers (DingTalk/Feishu signing, WeCom markdown, bilingual text, retries, outbox).

Teams that run Prometheus + Alertmanager with the exported rules point a ``webhook_configs``
entry at ``http://<alertmanager_listen>/alertmanager/<receiver name>``
(``seekwatch rules export --format alertmanager`` writes these, when ``alertmanager_listen``
is set, for every receiver Alertmanager has no integration for: the ``BridgedReceiver``
modules, today dingtalk, feishu and wecom). A request is answered 200 only after its
notification is committed to the outbox, so Alertmanager's own retries cover the hop to alertd.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .state import StateStore

log = logging.getLogger("seekwatch.alertd.bridge")
PREFIX = "/alertmanager/"


def _ts(text: str | None) -> float | None:
    if not text or text.startswith("0001-"):
        return None
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def convert(body: dict[str, Any], dashboard_url: str | None, now: float) -> list[dict[str, Any]]:
    """Alertmanager webhook body → alertd notification payloads (one per status)."""
    by_status: dict[str, list[dict[str, Any]]] = {}
    for a in body.get("alerts") or []:
        lab = dict(a.get("labels") or {})
        ann = a.get("annotations") or {}
        lab.setdefault("rule", lab.get("alertname", "alert"))
        lab.setdefault("node", lab.get("instance", lab.get("job", "")))
        lab.setdefault("severity", "warning")
        detail: dict[str, Any] = {}
        if _num(ann.get("window_seconds")) is not None:
            detail["window"] = _num(ann["window_seconds"])
        for k in ("metric",):
            if ann.get(k):
                detail[k] = ann[k]
        for k in ("quantile", "instances"):
            if _num(ann.get(k)) is not None:
                detail[k] = _num(ann[k])
        if lab["rule"] == "no_data":
            detail["error"] = (ann.get("description") or "").splitlines()[0] if ann.get("description") else None
        status = a.get("status") or body.get("status") or "firing"
        by_status.setdefault(status, []).append({
            "key": a.get("fingerprint") or json.dumps(lab, sort_keys=True),
            "fingerprint": a.get("fingerprint", ""),
            "status": status,
            "labels": {k: str(v) for k, v in lab.items()},
            "value": _num(ann.get("value")),
            "threshold": _num(ann.get("threshold")),
            "detail": detail,
            "starts_at": _ts(a.get("startsAt")),
            "ends_at": _ts(a.get("endsAt")) if status == "resolved" else None,
        })
    return [{"id": str(uuid.uuid4()), "status": st, "group_key": body.get("groupKey", ""),
             "group_labels": body.get("groupLabels") or {}, "alerts": docs, "created_at": now,
             "dashboard_url": dashboard_url, "source": "alertmanager"}
            for st, docs in by_status.items()]


class AlertmanagerBridge:
    def __init__(self, listen: str, state_path, receivers: list[dict[str, Any]], dashboard_url: str | None,
                 wake: threading.Event | None = None):
        self.names = {r["name"] for r in receivers}
        self.store = StateStore(state_path)
        self.lock = threading.Lock()
        self.dashboard_url = dashboard_url
        self.wake = wake
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                code, msg = outer.handle(self.path, self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                data = json.dumps({"status": "ok" if code == 200 else "error", "message": msg}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        host, port = listen.rsplit(":", 1)
        self.server = ThreadingHTTPServer((host, int(port)), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="alertd-bridge", daemon=True)

    def start(self) -> "AlertmanagerBridge":
        self.thread.start()
        log.info("accepting Alertmanager webhooks on port %d at %s<receiver>", self.port, PREFIX)
        return self

    def handle(self, path: str, raw: bytes) -> tuple[int, str]:
        name = path.split("?", 1)[0][len(PREFIX):] if path.startswith(PREFIX) else ""
        if name not in self.names:
            return 404, f"no receiver named {name!r}; POST to {PREFIX}<receiver name>"
        try:
            body = json.loads(raw)
            payloads = convert(body, self.dashboard_url, time.time())
        except (ValueError, TypeError, AttributeError) as exc:
            return 400, f"not an Alertmanager webhook payload: {exc}"
        with self.lock:
            for p in payloads:
                self.store.enqueue(name, p)
        if self.wake is not None:
            self.wake.set()
        log.info("bridged %d Alertmanager notification(s) (%s) to %s", len(payloads), body.get("groupKey"), name)
        return 200, f"queued {len(payloads)}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.store.close()
