"""``POST /v1/feedback``: a user's thumbs up/down on a turn (or a whole session).

The feedback id is derived from what was rated, how, and the comment, so a client that
retries the same feedback (a flaky network, a double click) is counted and logged once, and
the log store, which uses the id as document id, keeps one copy.
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict

from fastapi import APIRouter, Request

from inference.chat.protocol import FeedbackRequest
from inference.http_errors import parse_body
from inference.turns import FeedbackEvent

router = APIRouter()


class RecentIds:
    """A bounded set of recently seen ids (oldest forgotten first)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, key: str) -> bool:
        """Remember ``key``; False when it was already there."""
        with self._lock:
            if key in self._ids:
                self._ids.move_to_end(key)
                return False
            self._ids[key] = None
            if len(self._ids) > self.capacity:
                self._ids.popitem(last=False)
            return True


def feedback_id_for(body: FeedbackRequest) -> str:
    h = hashlib.sha256("\0".join([body.request_id or "", body.session_id or "", body.rating,
                                  body.comment or ""]).encode("utf-8"))
    return "fb-" + h.hexdigest()[:32]


@router.post("/v1/feedback", openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": FeedbackRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
async def feedback(request: Request):
    """Record a rating; it counts in the dialogue completion rate (a turn with negative
    feedback is not completed)."""
    body = await parse_body(request, FeedbackRequest)
    fid = feedback_id_for(body)
    duplicate = not request.app.state.feedback_seen.add(fid)
    if not duplicate:
        request.app.state.observer.on_feedback(FeedbackEvent(
            feedback_id=fid, rating=body.rating, request_id=body.request_id,
            session_id=body.session_id, comment=body.comment, received_at=time.time()))
    return {"object": "feedback", "id": fid, "status": "duplicate" if duplicate else "recorded"}
