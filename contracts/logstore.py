"""One small storage adapter for Elasticsearch 8/9 and OpenSearch 2: plain JSON over REST.

It asks the store who it is once (``GET /`` → ``version.distribution``) and differs only
where the two products differ: retention is ILM (``_ilm/policy``, attached through the index
setting ``index.lifecycle.name``) on Elasticsearch and ISM (``_plugins/_ism/policies``,
attached through the policy's ``ism_template``) on OpenSearch. Everything else — bulk,
composable index templates, ingest pipelines, data streams, search, aggregations — is the
same JSON on both.

Why not elasticsearch-py: it refuses OpenSearch (product check) and opensearch-py refuses
nothing but is a second client for the same handful of calls; plain REST serves both.

TLS: certificates are verified by default; ``ca_certs`` points at a CA bundle for a
self-signed cluster; ``verify=False`` exists for throwaway test clusters only.
Auth: basic (``username``/``password``) or an Elasticsearch API key (``api_key``).

It lives in the bottom layer because two parts talk to the store: the monitor (``es-setup``,
``es-retention``, ``ship``) and the dashboard (``--url``). Both take the same connection
flags and build the client the same way (:mod:`contracts.logstore_args`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import httpx

SESSION_STREAM = "seekwatch-sessions"
FEEDBACK_STREAM = "seekwatch-feedback"
INDEX_PATTERN = "seekwatch-*"
PIPELINE = "seekwatch-logs"
TEMPLATE = "seekwatch-logs"
RETENTION_POLICY = "seekwatch-retention"


class StoreError(RuntimeError):
    """The log store answered with an error status."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        reason = body
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            err = body["error"]
            reason = f"{err.get('type')}: {err.get('reason')}"
        super().__init__(f"{method} {path} -> {status}: {str(reason)[:500]}")


class StoreUnavailable(RuntimeError):
    """The log store could not be reached (connection refused, timeout, 502/503/504)."""


@dataclass(frozen=True)
class StoreInfo:
    distribution: str  # "elasticsearch" | "opensearch"
    version: str
    core_only: bool = False  # an Elasticsearch without x-pack (no ILM, no ingest): smoke tests only

    @property
    def major(self) -> int:
        try:
            return int(self.version.split(".")[0])
        except ValueError:
            return 0

    @property
    def retention_api(self) -> str:
        return "ism" if self.distribution == "opensearch" else "ilm"


def _auth_from_env(username, password, api_key):
    username = username or os.environ.get("SEEKWATCH_ES_USERNAME")
    password = password or os.environ.get("SEEKWATCH_ES_PASSWORD")
    api_key = api_key or os.environ.get("SEEKWATCH_ES_API_KEY")
    return username, password, api_key


class StoreClient:
    """A thin REST client. ``request`` returns parsed JSON or raises StoreError /
    StoreUnavailable; nothing is retried here (the shipper owns its retry policy)."""

    def __init__(
        self,
        url: str,
        *,
        ca_certs: str | None = None,
        verify: bool = True,
        username: str | None = None,
        password: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        username, password, api_key = _auth_from_env(username, password, api_key)
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"ApiKey {api_key}"
        auth = httpx.BasicAuth(username, password or "") if username else None
        verify_arg: Any = verify
        if verify and ca_certs:
            import ssl

            verify_arg = ssl.create_default_context(cafile=ca_certs)
        self._http = httpx.Client(
            base_url=self.url, headers=headers, auth=auth, verify=verify_arg,
            timeout=httpx.Timeout(timeout, connect=5.0),
        )
        self._info: StoreInfo | None = None

    # -- plumbing -----------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "StoreClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, Any] | None = None,
        ndjson: bytes | None = None,
        ok_missing: bool = False,
    ) -> Any:
        headers = {}
        content = None
        if ndjson is not None:
            content = ndjson
            headers["Content-Type"] = "application/x-ndjson"
        elif body is not None:
            content = json.dumps(body, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            resp = self._http.request(method, path, content=content, params=params, headers=headers)
        except (httpx.TransportError,) as exc:
            raise StoreUnavailable(f"{method} {self.url}{path}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code in (502, 503, 504):
            raise StoreUnavailable(f"{method} {self.url}{path}: HTTP {resp.status_code}")
        try:
            data = resp.json() if resp.content else None
        except ValueError:
            data = resp.text
        if ok_missing and resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise StoreError(method, path, resp.status_code, data)
        return data

    # -- who is there -------------------------------------------------------------------
    def info(self) -> StoreInfo:
        """Detect the store once: ``GET /`` → version.distribution (absent on
        Elasticsearch). A 400/404 on ``GET /`` is the core-only Elasticsearch build."""
        if self._info is None:
            try:
                root = self.request("GET", "/")
            except StoreError as exc:
                if exc.status in (400, 404, 405):
                    self._info = StoreInfo("elasticsearch", "unknown", core_only=True)
                    return self._info
                raise
            version = (root or {}).get("version", {})
            dist = version.get("distribution") or "elasticsearch"
            self._info = StoreInfo(dist, str(version.get("number", "unknown")))
        return self._info

    def health(self) -> dict:
        return self.request("GET", "/_cluster/health")

    # -- documents ----------------------------------------------------------------------
    def bulk(self, ndjson: bytes, *, refresh: str | None = None, pipeline: str | None = None) -> dict:
        params = {}
        if refresh:
            params["refresh"] = refresh
        if pipeline:
            params["pipeline"] = pipeline
        return self.request("POST", "/_bulk", params=params, ndjson=ndjson)

    def refresh(self, target: str = INDEX_PATTERN) -> None:
        self.request("POST", f"/{target}/_refresh")

    def count(self, target: str = INDEX_PATTERN, query: Mapping | None = None) -> int:
        body = {"query": query} if query else None
        return int(self.request("POST", f"/{target}/_count", body)["count"])

    def search(self, target: str = INDEX_PATTERN, body: Mapping | None = None, **params: Any) -> dict:
        return self.request("POST", f"/{target}/_search", body or {}, params=params or None)

    # -- setup objects ------------------------------------------------------------------
    def get_index_template(self, name: str) -> dict | None:
        data = self.request("GET", f"/_index_template/{name}", ok_missing=True)
        if not data:
            return None
        for item in data.get("index_templates", []):
            if item.get("name") == name:
                return item["index_template"]
        return None

    def put_index_template(self, name: str, body: Mapping) -> None:
        self.request("PUT", f"/_index_template/{name}", body)

    def get_pipeline(self, name: str) -> dict | None:
        data = self.request("GET", f"/_ingest/pipeline/{name}", ok_missing=True)
        return (data or {}).get(name)

    def put_pipeline(self, name: str, body: Mapping) -> None:
        self.request("PUT", f"/_ingest/pipeline/{name}", body)

    def data_stream_exists(self, name: str) -> bool:
        data = self.request("GET", f"/_data_stream/{name}", ok_missing=True)
        return bool(data and data.get("data_streams"))

    def create_data_stream(self, name: str) -> None:
        self.request("PUT", f"/_data_stream/{name}")

    def backing_indices(self, name: str) -> list[str]:
        data = self.request("GET", f"/_data_stream/{name}")
        out: list[str] = []
        for ds in data.get("data_streams", []):
            out.extend(i["index_name"] for i in ds.get("indices", []))
        return out

    # -- retention: the one place the products differ ------------------------------------
    def retention_paths(self, policy: str) -> tuple[str, str]:
        """(policy path, explain path prefix) for this store."""
        if self.info().retention_api == "ism":
            return f"/_plugins/_ism/policies/{policy}", "/_plugins/_ism/explain"
        return f"/_ilm/policy/{policy}", "/{index}/_ilm/explain"

    def get_retention_policy(self, policy: str) -> dict | None:
        path, _ = self.retention_paths(policy)
        data = self.request("GET", path, ok_missing=True)
        if data is None:
            return None
        if self.info().retention_api == "ism":
            return data  # {"_id", "_seq_no", "_primary_term", "policy": {...}}
        return data.get(policy)  # {"version", "modified_date", "policy": {...}}

    def put_retention_policy(self, policy: str, body: Mapping, existing: Mapping | None = None) -> None:
        path, _ = self.retention_paths(policy)
        params = None
        if self.info().retention_api == "ism" and existing:
            # ISM refuses to overwrite without optimistic-concurrency parameters.
            params = {"if_seq_no": existing["_seq_no"], "if_primary_term": existing["_primary_term"]}
        self.request("PUT", path, body, params=params)

    def explain_retention(self, index: str) -> dict:
        """The retention explain API for ``index``: ``{"policy": name | None, "raw": ...}``."""
        if self.info().retention_api == "ism":
            raw = self.request("GET", f"/_plugins/_ism/explain/{index}")
            entry = raw.get(index, {}) if isinstance(raw, dict) else {}
            policy = entry.get("index.plugins.index_state_management.policy_id") or entry.get("policy_id")
            return {"policy": policy, "raw": raw}
        raw = self.request("GET", f"/{index}/_ilm/explain")
        entry = raw.get("indices", {}).get(index, {})
        return {"policy": entry.get("policy") if entry.get("managed") else None, "raw": raw}

    def retention_supported(self) -> bool:
        """Is the retention API there? (ISM is a plugin: an OpenSearch without it, such as
        the embedded test store, answers 'no handler found'; ILM is absent on core-only
        Elasticsearch builds.)"""
        info = self.info()
        if info.core_only:
            return False
        path, _ = self.retention_paths("__seekwatch_probe__")
        try:
            self.request("GET", path, ok_missing=True)
        except StoreError as exc:
            if exc.status in (400, 405) or "no handler" in str(exc.body).lower():
                return False
            raise
        return True


def iter_bulk_items(response: Mapping) -> Iterable[tuple[str, Mapping]]:
    """(op type, item) for each item of a ``_bulk`` response, in request order."""
    for item in response.get("items", []):
        for op, detail in item.items():
            yield op, detail
