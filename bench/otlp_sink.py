"""An OTLP/HTTP collector stand-in for the gw-trace row: accepts POST /v1/traces, answers 200 at once,
and counts what it got (GET /count: {"posts": N, "bytes": N}), so the bench can check that spans did
arrive without decoding them on the measured machine's time.

    python bench/otlp_sink.py PORT"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

counts = {"posts": 0, "bytes": 0}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with lock:
            counts["posts"] += 1
            counts["bytes"] += len(body)
        self._answer(b"", "application/x-protobuf")

    def do_GET(self) -> None:
        with lock:
            text = json.dumps(counts).encode()
        self._answer(text, "application/json")

    def _answer(self, body: bytes, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
