"""Alert state, silences and the notification outbox, in one SQLite file.

Every evaluation applies its state changes *and* queues the notifications they cause in one
transaction, so a crash (even SIGKILL) leaves either both or neither: after a restart a
firing alert that was already notified is not notified again, and one that resolves later
still gets its resolved notice. Delivery reads the outbox, and marks each row sent right
after the receiver accepted it.

Tables (stable, the dashboard may read them):

* ``alerts``   — one row per pending/firing alert (``key``, ``labels`` JSON, ``state``,
  ``active_at``, ``fired_at``, ``value``, ``threshold``, ``notified``, ``last_notified_at``).
* ``events``   — history: ``t``, ``key``, ``labels``, ``event`` (pending|firing|resolved, or
  inactive for a pending alert that cleared before ``for``), ``value``, ``threshold``.
* ``silences`` — ``matchers`` JSON (label -> glob), ``starts_at``, ``ends_at``, ``comment``.
* ``outbox``   — ``receiver``, ``kind`` (firing|resolved), ``payload`` JSON, ``status``
  (pending|sent|failed|silenced), ``attempts``, ``next_attempt_at``, ``last_error``, ``sent_at``.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from .rules import Evaluation, Result, alert_key

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
  key TEXT PRIMARY KEY, labels TEXT NOT NULL, state TEXT NOT NULL, active_at REAL NOT NULL,
  fired_at REAL, value REAL, threshold REAL, detail TEXT, notified INTEGER NOT NULL DEFAULT 0,
  last_notified_at REAL, updated_at REAL);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY, t REAL NOT NULL, key TEXT NOT NULL, labels TEXT NOT NULL,
  event TEXT NOT NULL, value REAL, threshold REAL);
CREATE TABLE IF NOT EXISTS silences (
  id INTEGER PRIMARY KEY, matchers TEXT NOT NULL, starts_at REAL NOT NULL, ends_at REAL NOT NULL,
  created_by TEXT, comment TEXT);
CREATE TABLE IF NOT EXISTS outbox (
  id INTEGER PRIMARY KEY, created_at REAL NOT NULL, receiver TEXT NOT NULL, kind TEXT NOT NULL,
  group_key TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
  attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL, last_error TEXT, sent_at REAL);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(status, next_attempt_at);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
"""


def connect(path: str | Path) -> sqlite3.Connection:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(p), timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def silence_matches(matchers: dict[str, str], labels: dict[str, str]) -> bool:
    return all(fnmatch.fnmatchcase(labels.get(k, ""), v) for k, v in matchers.items())


class StateStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.conn = connect(self.path)

    def close(self) -> None:
        self.conn.close()

    # -- silences ---------------------------------------------------------------------------
    def add_silence(self, matchers: dict[str, str], duration_s: float, comment: str = "",
                    created_by: str = "", now: float | None = None) -> int:
        now = time.time() if now is None else now
        cur = self.conn.execute(
            "INSERT INTO silences(matchers, starts_at, ends_at, created_by, comment) VALUES (?,?,?,?,?)",
            (json.dumps(matchers, sort_keys=True), now, now + duration_s, created_by, comment))
        return int(cur.lastrowid)

    def expire_silence(self, sid: int, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        cur = self.conn.execute("UPDATE silences SET ends_at=? WHERE id=? AND ends_at>?", (now, sid, now))
        return cur.rowcount > 0

    def silences(self, include_expired: bool = False, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        q = "SELECT * FROM silences" + ("" if include_expired else " WHERE ends_at > ?") + " ORDER BY id"
        rows = self.conn.execute(q, () if include_expired else (now,)).fetchall()
        return [dict(r, matchers=json.loads(r["matchers"])) for r in rows]

    def is_silenced(self, labels: dict[str, str], now: float, active: list[dict[str, Any]] | None = None) -> bool:
        active = self.silences(now=now) if active is None else active
        return any(s["starts_at"] <= now < s["ends_at"] and silence_matches(s["matchers"], labels) for s in active)

    # -- alerts -----------------------------------------------------------------------------
    def alerts(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM alerts ORDER BY key").fetchall()
        return [dict(r, labels=json.loads(r["labels"]), detail=json.loads(r["detail"] or "{}")) for r in rows]

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r, labels=json.loads(r["labels"])) for r in rows]

    def apply(self, result: Result, now: float, *, repeat_interval: float, group_by: list[str],
              receivers: list[dict[str, Any]], send_resolved: bool = True,
              dashboard_url: str | None = None) -> list[dict[str, Any]]:
        """Advance every alert's state machine; queue notifications. Returns the queued payloads."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            existing = {r["key"]: dict(r, labels=json.loads(r["labels"]), detail=json.loads(r["detail"] or "{}"))
                        for r in conn.execute("SELECT * FROM alerts")}
            active_silences = self.silences(now=now)
            notes: list[tuple[str, dict[str, Any]]] = []
            seen: set[str] = set()

            def event(key: str, labels: dict[str, str], name: str, value: Any, thr: Any) -> None:
                conn.execute("INSERT INTO events(t, key, labels, event, value, threshold) VALUES (?,?,?,?,?,?)",
                             (now, key, json.dumps(labels, sort_keys=True), name, value, thr))

            def resolve(key: str, row: dict[str, Any], ev: Evaluation | None) -> None:
                if row["state"] == "firing":
                    value = ev.value if ev is not None else row["value"]
                    event(key, row["labels"], "resolved", value, row["threshold"])
                    if row["notified"] and send_resolved and not self.is_silenced(row["labels"], now, active_silences):
                        notes.append(("resolved", _alert_doc(key, row, "resolved", now, value)))
                else:
                    event(key, row["labels"], "inactive", ev.value if ev is not None else None, row["threshold"])
                conn.execute("DELETE FROM alerts WHERE key=?", (key,))

            for ev in result.evaluations:
                key = ev.key
                seen.add(key)
                row = existing.get(key)
                if ev.active is None:
                    continue
                if not ev.active:
                    if row is not None:
                        resolve(key, row, ev)
                    continue
                if row is None:
                    row = {"key": key, "labels": ev.labels, "state": "pending", "active_at": now, "fired_at": None,
                           "notified": 0, "last_notified_at": None}
                    conn.execute("INSERT INTO alerts(key, labels, state, active_at) VALUES (?,?,?,?)",
                                 (key, json.dumps(ev.labels, sort_keys=True), "pending", now))
                    event(key, ev.labels, "pending", ev.value, ev.threshold)
                row["labels"], row["value"], row["threshold"] = ev.labels, ev.value, ev.threshold
                row["detail"] = ev.detail
                if row["state"] == "pending" and now - row["active_at"] >= ev.for_s - 1e-6:
                    row["state"], row["fired_at"] = "firing", now
                    event(key, ev.labels, "firing", ev.value, ev.threshold)
                if row["state"] == "firing" and not self.is_silenced(ev.labels, now, active_silences):
                    if not row["notified"]:
                        notes.append(("firing", _alert_doc(key, row, "firing", now, ev.value)))
                        row["notified"], row["last_notified_at"] = 1, now
                    elif now - (row["last_notified_at"] or 0) >= repeat_interval:
                        doc = _alert_doc(key, row, "firing", now, ev.value)
                        doc["repeat"] = True
                        notes.append(("firing", doc))
                        row["last_notified_at"] = now
                conn.execute(
                    "UPDATE alerts SET labels=?, state=?, fired_at=?, value=?, threshold=?, detail=?, notified=?, "
                    "last_notified_at=?, updated_at=? WHERE key=?",
                    (json.dumps(ev.labels, sort_keys=True), row["state"], row["fired_at"], ev.value, ev.threshold,
                     json.dumps(ev.detail, sort_keys=True, default=str), row["notified"], row["last_notified_at"],
                     now, key))

            frozen = result.frozen_nodes
            for key, row in existing.items():
                if key in seen or "*" in frozen or row["labels"].get("node") in frozen:
                    continue
                resolve(key, row, None)

            payloads = self._queue(notes, now, group_by, receivers, dashboard_url)
            conn.execute("COMMIT")
            return payloads
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _queue(self, notes: list[tuple[str, dict[str, Any]]], now: float, group_by: list[str],
               receivers: list[dict[str, Any]], dashboard_url: str | None) -> list[dict[str, Any]]:
        groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[dict[str, Any]]] = {}
        for kind, doc in notes:
            gl = tuple((k, doc["labels"].get(k, "")) for k in group_by if doc["labels"].get(k))
            groups.setdefault((kind, gl), []).append(doc)
        out = []
        for (kind, gl), docs in groups.items():
            group_key = "{" + ",".join(f'{k}="{v}"' for k, v in gl) + "}"
            for rc in receivers:
                sev = rc.get("severities")
                mine = [d for d in docs if not sev or d["labels"].get("severity") in sev]
                if not mine:
                    continue
                payload = {"id": str(uuid.uuid4()), "status": kind, "group_key": group_key,
                           "group_labels": dict(gl), "alerts": mine, "created_at": now,
                           "dashboard_url": dashboard_url}
                self.conn.execute(
                    "INSERT INTO outbox(created_at, receiver, kind, group_key, payload, next_attempt_at) VALUES (?,?,?,?,?,?)",
                    (now, rc["name"], kind, group_key, json.dumps(payload, default=str), now))
                out.append(payload)
        return out

    def prune(self, before: float) -> int:
        """Drop history older than ``before``: events, delivered/failed/silenced notifications
        and expired silences. Open alerts and pending notifications are never pruned."""
        n = 0
        for q in ("DELETE FROM events WHERE t < ?",
                  "DELETE FROM outbox WHERE status != 'pending' AND created_at < ?",
                  "DELETE FROM silences WHERE ends_at < ?"):
            n += self.conn.execute(q, (before,)).rowcount
        return n

    # -- outbox -----------------------------------------------------------------------------
    def enqueue(self, receiver: str, payload: dict[str, Any]) -> int:
        """Queue one ready-made notification (the Alertmanager bridge)."""
        cur = self.conn.execute(
            "INSERT INTO outbox(created_at, receiver, kind, group_key, payload, next_attempt_at) VALUES (?,?,?,?,?,?)",
            (payload["created_at"], receiver, payload["status"], payload["group_key"],
             json.dumps(payload, default=str), payload["created_at"]))
        return int(cur.lastrowid)

    def due(self, now: float, limit: int = 200) -> list[dict[str, Any]]:
        """Pending notifications that may be attempted now, oldest first, in order per receiver:
        a receiver's later notifications wait behind one that is backing off (a resolved notice
        never overtakes its firing notice)."""
        rows = self.conn.execute("SELECT * FROM outbox WHERE status='pending' ORDER BY id LIMIT ?",
                                 (limit,)).fetchall()
        out, blocked = [], set()
        for r in rows:
            if r["receiver"] in blocked:
                continue
            if r["next_attempt_at"] > now:
                blocked.add(r["receiver"])
                continue
            out.append(dict(r, payload=json.loads(r["payload"])))
        return out

    def next_due(self) -> float | None:
        row = self.conn.execute("SELECT MIN(next_attempt_at) FROM outbox WHERE status='pending'").fetchone()
        return row[0]

    def mark_sent(self, oid: int, now: float) -> None:
        self.conn.execute("UPDATE outbox SET status='sent', sent_at=?, attempts=attempts+1, last_error=NULL "
                          "WHERE id=?", (now, oid))

    def mark_status(self, oid: int, status: str, error: str | None = None) -> None:
        self.conn.execute("UPDATE outbox SET status=?, last_error=? WHERE id=?", (status, error, oid))

    def mark_retry(self, oid: int, attempts: int, next_at: float, error: str, failed: bool) -> None:
        self.conn.execute("UPDATE outbox SET attempts=?, next_attempt_at=?, last_error=?, status=? WHERE id=?",
                          (attempts, next_at, error[:500], "failed" if failed else "pending", oid))

    def outbox(self, status: str | None = None) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM outbox", ()
        if status:
            q, args = q + " WHERE status=?", (status,)
        rows = self.conn.execute(q + " ORDER BY id", args).fetchall()
        return [dict(r, payload=json.loads(r["payload"])) for r in rows]


def _alert_doc(key: str, row: dict[str, Any], status: str, now: float, value: Any) -> dict[str, Any]:
    return {
        "key": key,
        "fingerprint": fingerprint(key),
        "status": status,
        "labels": row["labels"],
        "value": value,
        "threshold": row.get("threshold"),
        "detail": row.get("detail") or {},
        "starts_at": row["active_at"],
        "fired_at": row.get("fired_at"),
        "ends_at": now if status == "resolved" else None,
    }


def keys_of(evals: Iterable[Evaluation]) -> list[str]:
    return [alert_key(e.labels) for e in evals]
