"""Fake providers on 127.0.0.1 for end-to-end tests: real HTTP servers in a thread, scripted per path.

A handler gets the recorded request and returns a Reply; special replies close the connection,
hang, or send bytes that are not HTTP. Every request is recorded for assertions."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Seen:
    method: str
    path: str  # with query
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))

    @property
    def route(self) -> str:
        return urlsplit(self.path).path

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] = b""
    headers: dict[str, str] = field(default_factory=dict)
    action: str = ""  # "" | "close" (drop the connection) | "hang" (never answer) | "garbage"
    delay: float = 0.0

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, dict | list):
            return json.dumps(self.body).encode(), "application/json"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return self.body, "application/octet-stream"


Handler = Callable[[Seen], Reply]


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops handshakes under a burst of new upstream connections.
    request_queue_size = 512
    daemon_threads = True


class FakeProvider:
    def __init__(self, port: int = 0) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        fake = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with fake.lock:
                    fake.seen.append(seen)
                handler = fake.routes.get((self.command, seen.route)) or fake.routes.get(("*", seen.route))
                reply = handler(seen) if handler else Reply(404, {"error": "no such path"})
                if reply.delay:
                    fake.stop_event.wait(reply.delay)
                if reply.action == "close":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if reply.action == "hang":
                    fake.stop_event.wait(30)
                    self.close_connection = True
                    return
                if reply.action == "garbage":
                    self.wfile.write(b"this is not HTTP at all\r\n\r\n")
                    self.close_connection = True
                    return
                data, ctype = reply.encoded()
                self.send_response(reply.status)
                headers = {"Content-Type": ctype, **reply.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", port), RequestHandler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on(self, method: str, path: str, handler: Handler | Reply) -> None:
        self.routes[(method, path)] = handler if callable(handler) else (lambda _seen, r=handler: r)

    def hits(self, path: str | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if path is None or s.route == path]

    def close(self) -> None:
        self.stop_event.set()
        self.server.shutdown()
        self.server.server_close()


class Blackhole:
    """A listening socket that never accepts, its queue filled: connects to it hang (no SYN-ACK)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers: list[socket.socket] = []
        # Fill the accept queue so the kernel stops completing handshakes.
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(s)
        time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        for s in self.fillers:
            s.close()
        self.sock.close()


def refused_url() -> str:
    """A loopback port with nothing listening: connects are refused at once."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"
