"""Retention without ILM/ISM: roll the data streams over daily and delete backing indices
whose newest record is older than the retention (what Elastic's Curator did before ILM).

Why this exists: ISM is a plugin that not every OpenSearch has (the embedded engine of the
demo and the tests lacks it, and its zip is not on Maven Central), and core-only
Elasticsearch builds have no ILM. There, ``es-setup`` warns that the 180-day retention is
not active; ``seekwatch es-retention``, run daily (cron, a Kubernetes CronJob), makes it
active with nothing but the core index APIs.

Rules, chosen to never delete a record younger than the retention:

* the write index is never deleted; it is rolled over once it is older than
  ``rollover_age`` (default a day) and holds at least one document, so old records end up
  in read-only backing indices that can be dropped whole;
* a read-only backing index is deleted only when the newest ``@timestamp`` in it is older
  than ``now - days`` (a max aggregation, not the index's creation date: a shipper that
  caught up on old files writes old records into a new index);
* an empty read-only backing index is deleted once its creation date is older than the
  retention.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from contracts.logstore import FEEDBACK_STREAM, SESSION_STREAM, StoreClient

DEFAULT_STREAMS = (SESSION_STREAM, FEEDBACK_STREAM)


@dataclass
class RetentionReport:
    rolled_over: list[str] = field(default_factory=list)   # data streams
    deleted: list[str] = field(default_factory=list)       # backing indices
    kept: list[str] = field(default_factory=list)          # backing indices, write indices included

    def lines(self, dry_run: bool = False) -> list[str]:
        verb = "would " if dry_run else ""
        return ([f"{verb}roll over {ds}" for ds in self.rolled_over]
                + [f"{verb}delete {ix}" for ix in self.deleted]
                + [f"keep {ix}" for ix in self.kept])


def _newest_timestamp(client: StoreClient, index: str) -> datetime | None:
    body = {"size": 0, "aggs": {"newest": {"max": {"field": "@timestamp"}}}}
    value = client.search(index, body).get("aggregations", {}).get("newest", {}).get("value")
    return None if value is None else datetime.fromtimestamp(value / 1000, timezone.utc)


def _created(client: StoreClient, index: str) -> datetime:
    settings = client.request("GET", f"/{index}/_settings/index.creation_date")
    ms = int(settings[index]["settings"]["index"]["creation_date"])
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


def enforce_retention(client: StoreClient, *, days: int = 180, streams: tuple[str, ...] = DEFAULT_STREAMS,
                      rollover_age: timedelta = timedelta(days=1), now: datetime | None = None,
                      dry_run: bool = False) -> RetentionReport:
    """Roll over and delete as the module docstring says; ``dry_run`` only reports."""
    if days < 1:
        raise ValueError("retention days must be >= 1")
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(days=days)
    report = RetentionReport()
    for ds in streams:
        if not client.data_stream_exists(ds):
            continue
        indices = client.backing_indices(ds)
        if not indices:
            continue
        write = indices[-1]  # the data stream API lists backing indices oldest first
        client.refresh(ds)
        if now - _created(client, write) >= rollover_age and client.count(write) > 0:
            report.rolled_over.append(ds)
            if not dry_run:
                client.request("POST", f"/{ds}/_rollover")
                indices = client.backing_indices(ds)  # the old write index is now read-only: judge it too
                write = indices[-1]
        for index in indices[:-1]:
            newest = _newest_timestamp(client, index)
            expired = newest < cutoff if newest is not None else _created(client, index) < cutoff
            if expired:
                report.deleted.append(index)
                if not dry_run:
                    client.request("DELETE", f"/{index}")
            else:
                report.kept.append(index)
        report.kept.append(write)
    return report
