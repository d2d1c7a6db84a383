"""The shipper's bulk sender: sends documents with ``_bulk`` until each one is acknowledged,
and says what happened in a :class:`SendResult`.

Acknowledged means indexed (201), already there (409: ``create`` of an id that exists, a
re-send after a crash or a retry) or refused for good (a 4xx for that document, or a whole
request a single document makes the store refuse): refused documents come back as
dead-letter entries in ``SendResult.refused``; the caller writes them with the batch's
other dead letters, in file order.

Retries: a connection error and a transient status (408, 429, 5xx: the one rule,
:func:`contracts.retry.transient_http_status`, shared with alertd's delivery) wait with the
one retry policy (:class:`contracts.retry.Backoff`: capped exponential, jittered) and try
again; per-item transient statuses (and an item without a status) are retried alone. A batch that may have reached the store before
(``ambiguous``: the first batch of a file after a start, a resend after a broken
connection) is first checked with an ``ids`` query over ``seekwatch-*``, so a rollover in
between cannot turn the re-send into a second copy. 413 and a whole-request 4xx split the
batch in halves to isolate the culprit. 401/403 are fatal (:class:`ShipperError`).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field

from contracts.logstore import INDEX_PATTERN, StoreClient, StoreError, StoreUnavailable, iter_bulk_items
from contracts.logtail import RawLine
from contracts.retry import Backoff, transient_http_status
from monitor.logstore.dead_letters import dead_letter
from monitor.logstore.ship_errors import ShipperError

log = logging.getLogger("seekwatch.ship")


@dataclass
class Doc:
    """One line ready to send: its ``create`` action and document id."""

    line: RawLine
    path: str
    doc_id: str
    index: str

    @property
    def action(self) -> bytes:
        return json.dumps({"create": {"_index": self.index, "_id": self.doc_id}}).encode()


@dataclass
class SendResult:
    completed: bool = True      # False: stopped before every document was acknowledged
    shipped: int = 0            # newly indexed
    duplicates: int = 0         # already present
    retries: int = 0            # requests or items sent again
    outages: int = 0            # times the store became unreachable
    refused: list[dict] = field(default_factory=list)  # dead-letter entries

    def add(self, other: "SendResult") -> "SendResult":
        self.completed = self.completed and other.completed
        self.shipped += other.shipped
        self.duplicates += other.duplicates
        self.retries += other.retries
        self.outages += other.outages
        self.refused.extend(other.refused)
        return self


class BulkSender:
    def __init__(self, client: StoreClient, *, stop_event: threading.Event, max_backoff: float = 30.0) -> None:
        self.client = client
        self.stop_event = stop_event
        self.backoff = Backoff(base=0.25, cap=max_backoff, jitter=0.5)  # the one retry policy (contracts.retry)
        self._down_since: float | None = None

    # -- the store's availability -----------------------------------------------------------
    def _note_down(self, exc: Exception, result: SendResult) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            result.outages += 1
            log.warning("log store unreachable (%s): waiting and retrying", exc)

    def _note_up(self) -> None:
        if self._down_since is not None:
            log.warning("log store reachable again after %.1fs: resuming", time.monotonic() - self._down_since)
            self._down_since = None

    # -- sending --------------------------------------------------------------------------------
    def _drop_present(self, pending: list[Doc], result: SendResult) -> list[Doc] | None:
        """Drop documents whose id is already in the store (any backing index). It keeps
        "create" idempotent across a rollover, where a 409 could not catch it (the id would be
        new to the new write index). Returns None when the store cannot be asked right now."""
        ids = [d.doc_id for d in pending]
        present: set[str] = set()
        try:
            try:  # search sees refreshed documents only; a refresh needs the "maintenance" privilege
                self.client.refresh(INDEX_PATTERN)
            except StoreError as exc:
                if exc.status not in (403, 404):
                    raise
            for i in range(0, len(ids), 5000):  # under the default max_result_window
                chunk = ids[i:i + 5000]
                res = self.client.search(INDEX_PATTERN, {"query": {"ids": {"values": chunk}}, "size": len(chunk),
                                                         "_source": False})
                present.update(h["_id"] for h in res.get("hits", {}).get("hits", []))
        except StoreUnavailable as exc:
            self._note_down(exc, result)
            return None
        except StoreError as exc:
            if exc.status == 404:  # no such index yet: nothing can be there
                return pending
            if transient_http_status(exc.status):
                self._note_down(exc, result)
                return None
            raise
        if present:
            result.duplicates += len(present)
            log.info("skipping %d lines already in the log store (re-sent after a restart or outage)", len(present))
        return [d for d in pending if d.doc_id not in present]

    def _wait(self, attempt: int) -> None:
        self.stop_event.wait(self.backoff.delay(attempt + 1))

    def send(self, docs: list[Doc], *, ambiguous: bool = False) -> SendResult:
        """Send until every document is acknowledged (or refused), or the stop event is set."""
        result = SendResult()
        pending = docs
        attempt = 0
        while pending:
            if self.stop_event.is_set():
                result.completed = False
                return result
            if ambiguous:
                checked = self._drop_present(pending, result)
                if checked is None:
                    result.retries += 1
                    self._wait(attempt)
                    attempt += 1
                    continue
                pending, ambiguous = checked, False
                if not pending:
                    break
            body = b"".join(b"%s\n%s\n" % (d.action, d.line.raw) for d in pending)
            try:
                resp = self.client.bulk(body)
            except StoreUnavailable as exc:
                self._note_down(exc, result)
                result.retries += 1
                ambiguous = True  # the request may have been applied before the connection broke
                self._wait(attempt)
                attempt += 1
                continue
            except StoreError as exc:
                if transient_http_status(exc.status):
                    self._note_down(exc, result)
                    result.retries += 1
                    self._wait(attempt)
                    attempt += 1
                    continue
                if exc.status in (401, 403):
                    raise ShipperError(f"log store refused the credentials: {exc}") from None
                if len(pending) == 1:
                    d = pending[0]
                    result.refused.append(dead_letter(d.path, d.line.offset, f"log store refused the request: {exc}",
                                                      d.line.raw))
                    return result
                # 413, or a whole-request 4xx: isolate the culprit by halving
                half = len(pending) // 2
                result.add(self.send(pending[:half]))
                if result.completed:
                    result.add(self.send(pending[half:]))
                return result
            self._note_up()
            retry: list[Doc] = []
            items = list(iter_bulk_items(resp))
            if len(items) != len(pending):
                raise ShipperError(f"bulk response has {len(items)} items for {len(pending)} actions")
            for d, (_op, item) in zip(pending, items):
                status = int(item.get("status", 0))
                if status in (200, 201):
                    result.shipped += 1
                elif status == 409:
                    result.duplicates += 1
                elif transient_http_status(status) or status == 0:
                    retry.append(d)
                else:
                    err = item.get("error") or {}
                    reason = f"log store refused the document ({status}): {err.get('type')}: {err.get('reason')}"
                    cause = err.get("caused_by")
                    if isinstance(cause, dict):
                        reason += f" (caused by {cause.get('type')}: {cause.get('reason')})"
                    result.refused.append(dead_letter(d.path, d.line.offset, reason, d.line.raw))
            if retry:
                result.retries += len(retry)
                self._wait(attempt)
                attempt += 1
            pending = retry
        return result
