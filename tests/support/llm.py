"""A fake OpenAI-compatible chat endpoint on loopback, for the LLM rewrite (unit and workflow tests)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeLLM:
    """An OpenAI-compatible chat endpoint on loopback. ``mode`` decides the answer to each request."""

    def __init__(self):
        self.requests: list[dict] = []
        self.mode = "ok"
        self.delay = 0.0  # seconds per answer (a slow model keeps a job running long enough to be killed)
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][0]["content"].rsplit("\n\n", 1)[-1]
                with outer.lock:
                    outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "text": text})
                mode = outer.mode(text) if callable(outer.mode) else outer.mode
                if mode == "500":
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"oops")
                    return
                if mode == "slow":
                    time.sleep(1.0)
                elif outer.delay:
                    time.sleep(outer.delay)
                payload = (b"{not json" if mode == "badjson" else
                           json.dumps({"choices": [{"message": {"role": "assistant",
                                                                "content": "REWRITTEN: " + text}}]}).encode())
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
