"""A tiny OpenAI-compatible chat server on loopback whose answers can be delayed: the upstream
behind a real ``seekwatch serve --engine upstream`` node, to drive the node's latency."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.fixtures.ports import free_port


class SlowUpstream:
    def __init__(self, delay: float = 0.0, reply: str = "好的，收到。OK."):
        self.delay = delay
        self.reply = reply
        self.calls = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                body = json.dumps({"object": "list", "data": [{"id": "deepseek-chat", "object": "model"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                req = json.loads(self.rfile.read(n) or b"{}")
                outer.calls += 1
                time.sleep(outer.delay)          # time to first token
                model = req.get("model", "deepseek-chat")
                base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
                if not req.get("stream"):
                    body = json.dumps({**base, "object": "chat.completion", "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": outer.reply}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
                for piece in (outer.reply[:3], outer.reply[3:]):
                    events.append({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                events.append({**base, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
                for e in events:
                    self.wfile.write(f"data: {json.dumps(e, ensure_ascii=False)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *a):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
