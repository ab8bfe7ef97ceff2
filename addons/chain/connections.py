"""Client connections under hostile input (SPEC 18): `gateway.client_idle` and
`gateway.header_timeout` (see addons/conntrack.py), and answering a request without reading its
body (a caller refused before its body is buffered)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from mitmproxy import connection, ctx, http, tcp

from addons.chain.context import GatewayContext
from addons.conntrack import ConnectionTracker

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


def write_to_client(client: connection.Client, data: bytes) -> bool:
    """Write raw bytes to a plain-TCP client (an HTTP/1 answer before closing). Not for TLS clients:
    their bytes go through mitmproxy's TLS layer."""
    if client.tls:
        return False
    io = _client_io(client)
    writer = getattr(io, "writer", None)
    if writer is None or not isinstance(writer, asyncio.StreamWriter) or writer.is_closing():
        return False
    writer.write(data)
    return True


class ClientConnections:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        self.tracker = ConnectionTracker()
        self.closed_total: dict[str, int] = {"idle": 0, "header timeout": 0}
        self._sweeper: asyncio.Task[None] | None = None
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
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

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

    def client_connected(self, client: connection.Client) -> None:
        self.tracker.opened(client.id, time.time())

    def client_disconnected(self, client: connection.Client) -> None:
        self.tracker.closed(client.id)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self.tracker.awaiting_headers(flow.client_conn.id, time.time())

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.tracker.started(flow.client_conn.id)

    def response(self, flow: http.HTTPFlow) -> None:
        self.tracker.finished(flow.client_conn.id, time.time())

    def error(self, flow: http.HTTPFlow) -> None:
        with contextlib.suppress(Exception):
            self.tracker.finished(flow.client_conn.id, time.time())

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        self.tracker.started(flow.client_conn.id)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.tracker.finished(flow.client_conn.id, time.time())

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self.tracker.started(flow.client_conn.id)

    def tcp_end(self, flow: tcp.TCPFlow) -> None:
        self.tracker.finished(flow.client_conn.id, time.time())

    def tcp_error(self, flow: tcp.TCPFlow) -> None:
        self.tracker.finished(flow.client_conn.id, time.time())

