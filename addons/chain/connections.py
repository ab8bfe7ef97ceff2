"""Client connections under hostile input (SPEC 18): `gateway.client_idle` and
`gateway.header_timeout` (see addons/conntrack.py), and answering a request without reading its
body (a caller refused before its body is buffered)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from mitmproxy import connection, ctx, http, tcp
from mitmproxy.net.http import status_codes
from mitmproxy.proxy.layers.tls import ClientTLSLayer
from OpenSSL import SSL

from addons.chain.context import JSON, GatewayContext, fail_closed
from addons.conntrack import ConnectionTracker
from addons.envelope import render
from addons.errors import Code
from addons.explicit import EXPLICIT_HOST
from addons.limits import MAX_BODY as MAX_SERVICE_BODY
from addons.limits import MIB

log = logging.getLogger("gateway")


def _client_io(client: connection.Client) -> Any:
    """mitmproxy's transport record of a client connection (reader task and writer), or None.

    mitmproxy has no public API to close one client connection or write to it from an addon; this is
    what its own inactivity timeout uses (ConnectionHandler.on_timeout)."""
    server = ctx.master.addons.get("proxyserver")
    handler = server.connections.get(client.id) if server is not None else None
    if handler is None:
        return None
    return handler.transports.get(handler.client)


def close_client(client: connection.Client | str, reason: str) -> bool:
    """Close a client connection now (its reader task is cancelled; the writer is flushed and closed)."""
    if isinstance(client, str):
        server = ctx.master.addons.get("proxyserver")
        handler = server.connections.get(client) if server is not None else None
        io = handler.transports.get(handler.client) if handler is not None else None
    else:
        io = _client_io(client)
    if io is None or io.handler is None:
        return False
    io.handler.cancel(reason)
    return True


def write_answer(flow: http.HTTPFlow, request_id: str, code: int, status: int, message: str,
                 headers: dict[str, str] | None = None) -> None:
    """Answer a call whose body is not (or no longer) read, before its connection is closed: on
    HTTP/1 straight to the client's connection (through its TLS session in a tunnel), with
    `Connection: close`. Nothing on HTTP/2: that caller sees its stream reset or its connection
    closed (an answer before RST_STREAM was tried; neither curl nor httpx showed it, see README)."""
    if not flow.request.http_version.startswith("HTTP/1"):
        return
    body = render(code, message, None, request_id)
    lines = [f"HTTP/1.1 {status} {status_codes.RESPONSES.get(status, '')}", "Content-Type: " + JSON,
             f"Content-Length: {len(body)}", f"X-Request-ID: {request_id}", f"X-Gateway-Code: {code}",
             "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    write_to_client(flow.client_conn, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def write_to_client(client: connection.Client, data: bytes) -> bool:
    """Write an HTTP/1 answer to a client before its connection is closed, without the HTTP layer
    (which would read the request's body first). Over TLS the bytes are encrypted by the client's
    own TLS session, as mitmproxy's TLS layer does for everything it sends (`TLSLayer.send_data`);
    the connection is closed right after, so nothing else is sent on that session."""
    io = _client_io(client)
    writer = getattr(io, "writer", None)
    if writer is None or not isinstance(writer, asyncio.StreamWriter) or writer.is_closing():
        return False
    if not client.tls:
        writer.write(data)
        return True
    session = _client_tls_session(client)
    if session is None:
        return False
    try:
        session.sendall(data)
        while True:
            try:
                writer.write(session.bio_read(65535))
            except SSL.WantReadError:  # all of it written
                return True
    except SSL.Error:
        return False


def _layers(client: connection.Client) -> Iterator[Any]:
    """The layers (and HTTP streams) of a client connection's handler, each once (at most 64)."""
    server = ctx.master.addons.get("proxyserver")
    handler = server.connections.get(client.id) if server is not None else None
    stack: list[Any] = [getattr(handler, "layer", None)]
    seen: set[int] = set()
    while stack and len(seen) < 64:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        streams = getattr(node, "streams", None)
        if isinstance(streams, dict):
            stack.extend(streams.values())
        # Some layers keep their child only as the bound method they delegate events to.
        stack.extend((getattr(node, "layer", None), getattr(node, "child_layer", None),
                      getattr(getattr(node, "_handle_event", None), "__self__", None)))


def _client_tls_session(client: connection.Client) -> SSL.Connection | None:
    """The OpenSSL session of the client's TLS layer (the caller's side of an intercepted tunnel)."""
    for node in _layers(client):
        if isinstance(node, ClientTLSLayer) and node.conn is client and node.tls is not None:
            return node.tls
    return None


def buffered_body_size(flow: http.HTTPFlow) -> int | None:
    """How much of `flow`'s request body mitmproxy has buffered so far, or None if not found.

    mitmproxy calls no hook between the chunks of a body it buffers, so a chunked body has no length
    to check in advance: its HTTP stream's buffer is looked up in the connection's layers instead."""
    for node in _layers(flow.client_conn):
        if getattr(node, "flow", None) is flow and hasattr(node, "request_body_buf"):
            return len(node.request_body_buf)
    return None


BODY_CHECK_S = 0.05  # how often a chunked service body being buffered is measured


class ClientConnections:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        self.tracker = ConnectionTracker()
        self.closed_total: dict[str, int] = {"idle": 0, "header timeout": 0}
        self._sweeper: asyncio.Task[None] | None = None
        self._bodies: dict[http.HTTPFlow, None] = {}  # chunked service bodies being buffered
        self._body_task: asyncio.Task[None] | None = None
        gw.on_rules_changed.append(self._rules_changed)

    def _rules_changed(self, compiled: Any) -> None:
        spec = compiled.rules.gateway
        self.tracker.header_timeout = spec.header_timeout
        self.tracker.client_idle = spec.client_idle

    def running(self) -> None:
        # Sync on purpose (see Watch.running): mitmproxy's script reload needs a sync `running`.
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="gateway client deadlines")

    def done(self) -> None:
        for task in (self._sweeper, self._body_task):
            if task is not None:
                task.cancel()
        self._sweeper = self._body_task = None

    async def _sweep(self) -> None:
        while True:
            shortest = min(self.tracker.header_timeout, self.tracker.client_idle)
            # A deadline is met to within a quarter of the shortest timeout (at most 1 s late).
            await asyncio.sleep(min(1.0, max(0.05, shortest / 4)))
            try:
                for key, reason in self.tracker.expired(time.time()):
                    if close_client(key, reason):
                        self.closed_total[reason] = self.closed_total.get(reason, 0) + 1
                        log.debug("gateway: client connection closed (%s)", reason)
            except Exception as exc:  # a bug here must not end the sweeper
                log.error("gateway: client deadline sweep failed: %s", type(exc).__name__)

    # -- what the proxy tells us ---------------------------------------------------------------------

    @fail_closed
    def client_connected(self, client: connection.Client) -> None:
        self.tracker.opened(client.id, time.time())

    @fail_closed
    def client_disconnected(self, client: connection.Client) -> None:
        self.tracker.closed(client.id)

    @fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        self.tracker.awaiting_headers(flow.client_conn.id, time.time())

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.tracker.started(flow.client_conn.id)
        with contextlib.suppress(Exception):
            self._watch_chunked(flow)

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        self._bodies.pop(flow, None)  # the whole body has arrived

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        self.tracker.finished(flow.client_conn.id, time.time())

    @fail_closed
    def error(self, flow: http.HTTPFlow) -> None:
        self._bodies.pop(flow, None)
        with contextlib.suppress(Exception):
            self.tracker.finished(flow.client_conn.id, time.time())

    # -- chunked bodies of service calls ---------------------------------------------------------------

    def _watch_chunked(self, flow: http.HTTPFlow) -> None:
        headers = flow.request.headers
        compiled = self.gw.compiled
        if compiled is None or "content-length" in headers or "chunked" not in headers.get(
                "transfer-encoding", "").lower():
            return
        host = self.gw.call(flow).host
        if host != EXPLICIT_HOST and compiled.router.owner(host) is None:
            return  # pass-through: streamed, not buffered
        self._bodies[flow] = None
        if self._body_task is None or self._body_task.done():
            self._body_task = asyncio.get_running_loop().create_task(self._check_bodies(),
                                                                     name="gateway chunked bodies")

    async def _check_bodies(self) -> None:
        while self._bodies:
            await asyncio.sleep(BODY_CHECK_S)
            for flow in list(self._bodies):
                try:
                    size = buffered_body_size(flow)
                    if size is None:
                        self._bodies.pop(flow, None)  # the flow is gone (its connection closed)
                    elif size > MAX_SERVICE_BODY:
                        self._bodies.pop(flow, None)
                        self._too_large(flow, size)
                except Exception as exc:  # a bug here must not end the checks
                    self._bodies.pop(flow, None)
                    log.error("gateway: chunked body check failed: %s", type(exc).__name__)

    def _too_large(self, flow: http.HTTPFlow, size: int) -> None:
        call = self.gw.call(flow)
        call.code, call.status = Code.CALLER_INVALID, 413
        call.message = f"request body larger than the {MAX_SERVICE_BODY // MIB} MiB a service call takes"
        call.error = (f"chunked request body passed the {MAX_SERVICE_BODY // MIB} MiB a service call takes "
                      f"({size} bytes buffered); connection closed")
        write_answer(flow, call.request_id, call.code, call.status, call.message)
        close_client(flow.client_conn, "request body too large")

    @fail_closed
    def websocket_start(self, flow: http.HTTPFlow) -> None:
        self.tracker.started(flow.client_conn.id)

    @fail_closed
    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.tracker.finished(flow.client_conn.id, time.time())

    @fail_closed
    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self.tracker.started(flow.client_conn.id)

    @fail_closed
    def tcp_end(self, flow: tcp.TCPFlow) -> None:
        self.tracker.finished(flow.client_conn.id, time.time())

    @fail_closed
    def tcp_error(self, flow: tcp.TCPFlow) -> None:
        self.tracker.finished(flow.client_conn.id, time.time())

