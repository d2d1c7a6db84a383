"""The shipper's retry and error paths, driven by a scripted client (no engine needed):
per-item 429/503 retried alone, connection loss waited out, a whole-request 400 split to
isolate the bad line, 413 split, 401 fatal."""
from __future__ import annotations

import json

import pytest

from contracts.logstore import StoreError, StoreUnavailable
from monitor.logstore.shipper import Shipper, ShipperError
from tests.logstore.gen import append_lines, records


class ScriptedClient:
    """bulk() answers from a script of callables; records what was sent."""

    def __init__(self, script):
        self.script = list(script)
        self.sent: list[list[str]] = []
        self.indexed: set[str] = set()

    def refresh(self, target) -> None:
        pass

    def search(self, target, body) -> dict:
        ids = body["query"]["ids"]["values"]
        return {"hits": {"hits": [{"_id": i} for i in ids if i in self.indexed]}}

    def bulk(self, body: bytes) -> dict:
        lines = body.decode().splitlines()
        ids = [json.loads(a)["create"]["_id"] for a in lines[0::2]]
        self.sent.append(ids)
        step = self.script.pop(0) if self.script else ok
        return step(self, ids)


def ok(client, ids):
    items = []
    for i in ids:
        status = 409 if i in client.indexed else 201
        client.indexed.add(i)
        items.append({"create": {"_id": i, "status": status}})
    return {"errors": False, "items": items}


def first_item(status, err_type="es_rejected_execution_exception"):
    def step(client, ids):
        resp = ok(client, ids[1:])
        resp["items"].insert(0, {"create": {"_id": ids[0], "status": status, "error": {"type": err_type, "reason": "x"}}})
        return resp
    return step


def raise_(exc):
    def step(client, ids):
        raise exc
    return step


def shipper(tmp_path, client, n=10, **kw):
    append_lines(tmp_path / "s.jsonl", records(n, seed=1, tag="retry"))
    return Shipper(tmp_path, client, max_backoff=0.01, **kw)


def test_item_429_and_503_are_retried_alone(tmp_path):
    client = ScriptedClient([first_item(429), first_item(503)])
    s = shipper(tmp_path, client)
    s.run(once=True)
    assert [len(x) for x in client.sent] == [10, 1, 1]
    assert s.stats.shipped == 10 and s.stats.retries == 2 and s.stats.dead_lettered == 0


def test_engine_unreachable_is_waited_out(tmp_path):
    down = StoreUnavailable("connection refused")
    client = ScriptedClient([raise_(down), raise_(down), raise_(StoreError("POST", "/_bulk", 503, {}))])
    s = shipper(tmp_path, client)
    s.run(once=True)
    assert s.stats.shipped == 10 and s.stats.outages == 1 and s.stats.retries == 3


def test_resend_after_a_lost_response_checks_ids_first(tmp_path):
    # The engine applied the bulk but the connection broke before the answer arrived.
    def applied_then_lost(client, ids):
        ok(client, ids)
        raise StoreUnavailable("read timeout")

    client = ScriptedClient([applied_then_lost])
    s = shipper(tmp_path, client)
    s.run(once=True)
    assert len(client.sent) == 1          # not sent again: the ids query found all ten
    assert s.stats.duplicates == 10 and s.stats.shipped == 0


def test_whole_request_400_is_split_to_the_culprit(tmp_path):
    bad = StoreError("POST", "/_bulk", 400, {"error": {"type": "illegal_argument_exception", "reason": "bad"}})

    append_lines(tmp_path / "s.jsonl", records(8, seed=2, tag="split"))
    victim = json.loads((tmp_path / "s.jsonl").read_text().splitlines()[5])["request_id"]

    def fail_if_contains(client, ids):
        client.script.append(fail_if_contains)  # the same rule for every request
        if victim in ids:
            raise bad
        return ok(client, ids)

    client = ScriptedClient([fail_if_contains])
    s = Shipper(tmp_path, client, max_backoff=0.01)
    s.run(once=True)
    assert s.stats.shipped == 7 and s.stats.dead_lettered == 1
    dead = json.loads((tmp_path / ".seekwatch-ship" / "dead-letter.ndjson").read_text())
    assert victim in dead["line"] and "log store refused the request" in dead["reason"]


def test_413_splits_the_batch(tmp_path):
    client = ScriptedClient([raise_(StoreError("POST", "/_bulk", 413, "too large"))])
    s = shipper(tmp_path, client)
    s.run(once=True)
    assert [len(x) for x in client.sent] == [10, 5, 5] and s.stats.shipped == 10


def test_401_stops_the_shipper_without_advancing(tmp_path):
    client = ScriptedClient([raise_(StoreError("POST", "/_bulk", 401, {}))])
    s = shipper(tmp_path, client)
    with pytest.raises(ShipperError, match="credentials"):
        s.run(once=True)
    assert not (tmp_path / ".seekwatch-ship" / "checkpoints.json").exists()
