"""A recording stand-in for the REST surface es-setup touches, to test the branches the
embedded OpenSearch cannot exercise: ILM on Elasticsearch, ISM on an OpenSearch that has the
plugin, and both explain APIs. It only stores and returns what it was given, in the shapes
the real engines answer (documented ones)."""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def _basic(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class FakeEngine:
    def __init__(self, distribution: str = "elasticsearch", version: str = "8.19.0", *,
                 tls: tuple[str, str] | None = None, basic_auth: tuple[str, str] | None = None) -> None:
        """``tls`` = (cert chain PEM, key PEM) serves HTTPS; ``basic_auth`` = (user, password)
        answers 401 to requests without those credentials."""
        self.distribution = distribution
        self.basic_auth = basic_auth
        self.version = version
        self.requests: list[tuple[str, str, dict, object]] = []
        self.ilm: dict[str, dict] = {}
        self.ism: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.templates: dict[str, dict] = {}
        self.streams: set[str] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.scheme = "http"
        if tls:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeEngine":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _q, _b in self.requests if m in ("PUT", "POST", "DELETE")]

    def _route(self, method: str, path: str, query: dict, body):  # noqa: C901 - a tiny router
        if path == "/" and method == "GET":
            v = {"number": self.version}
            if self.distribution == "opensearch":
                v["distribution"] = "opensearch"
            return 200, {"name": "fake", "version": v, "tagline": "fake"}
        m = re.fullmatch(r"/_ilm/policy/([^/]+)", path)
        if m and self.distribution == "elasticsearch":
            name = m.group(1)
            if method == "GET":
                return (200, {name: {"version": 1, "policy": self.ilm[name]}}) if name in self.ilm else (404, {})
            self.ilm[name] = body["policy"]
            return 200, {"acknowledged": True}
        m = re.fullmatch(r"/_plugins/_ism/policies/([^/]+)", path)
        if m and self.distribution == "opensearch":
            name = m.group(1)
            if method == "GET":
                if name not in self.ism:
                    return 404, {"error": {"type": "status_exception", "reason": "Policy not found"}}
                e = self.ism[name]
                return 200, {"_id": name, "_seq_no": e["seq"], "_primary_term": 1, "policy": e["policy"]}
            if name in self.ism and str(self.ism[name]["seq"]) != (query.get("if_seq_no") or [None])[0]:
                return 409, {"error": {"type": "version_conflict_engine_exception", "reason": "conflict"}}
            seq = self.ism.get(name, {"seq": -1})["seq"] + 1
            self.ism[name] = {"seq": seq, "policy": body["policy"]}
            return 201, {"_id": name, "_seq_no": seq, "_primary_term": 1}
        m = re.fullmatch(r"/_ingest/pipeline/([^/]+)", path)
        if m:
            name = m.group(1)
            if method == "GET":
                return (200, {name: self.pipelines[name]}) if name in self.pipelines else (404, {})
            self.pipelines[name] = body
            return 200, {"acknowledged": True}
        m = re.fullmatch(r"/_index_template/([^/]+)", path)
        if m:
            name = m.group(1)
            if method == "GET":
                if name not in self.templates:
                    return 404, {}
                return 200, {"index_templates": [{"name": name, "index_template": self.templates[name]}]}
            self.templates[name] = body
            return 200, {"acknowledged": True}
        m = re.fullmatch(r"/_data_stream/([^/]+)", path)
        if m:
            name = m.group(1)
            if method == "GET":
                if name not in self.streams:
                    return 404, {}
                return 200, {"data_streams": [{"name": name, "indices": [{"index_name": f".ds-{name}-000001"}]}]}
            self.streams.add(name)
            return 200, {"acknowledged": True}
        m = re.fullmatch(r"/([^/_][^/]*)/_ilm/explain", path)
        if m and self.distribution == "elasticsearch":
            idx = m.group(1)
            return 200, {"indices": {idx: {"index": idx, "managed": True, "policy": "seekwatch-retention",
                                            "phase": "hot"}}}
        m = re.fullmatch(r"/_plugins/_ism/explain/([^/]+)", path)
        if m and self.distribution == "opensearch":
            idx = m.group(1)
            return 200, {idx: {"index.plugins.index_state_management.policy_id": "seekwatch-retention",
                               "index": idx, "policy_id": "seekwatch-retention", "enabled": True},
                         "total_managed_indices": 1}
        return 400, {"error": f"no handler found for uri [{path}] and method [{method}]"}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _do(self):
                parts = urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                body = json.loads(raw) if raw else None
                query = parse_qs(parts.query)
                fake.requests.append((self.command, parts.path, query, body))
                if fake.basic_auth and self.headers.get("Authorization") != _basic(*fake.basic_auth):
                    status, payload = 401, {"error": {"type": "security_exception", "reason": "missing authentication"}}
                else:
                    status, payload = fake._route(self.command, parts.path, query, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = _do

        return Handler
