"""WebSockets through the gateway.

To a host no service owns, a WebSocket passes through natively once the caller is identified.
mitmproxy appends every message to the flow until the connection closes, even in mitmdump, so a
long-lived socket would grow the process without bound: only the newest message is kept while no
flow store (mitmweb, `-w`) needs the history.

To a service, an upgrade is refused (-2005): the gateway sends service calls itself, one request
and one answer at a time, and cannot inject credentials into, retry or envelope a socket."""

from __future__ import annotations

from mitmproxy import ctx, http

from addons.chain.context import GatewayContext, fail_closed


def is_upgrade(request: http.Request) -> bool:
    return request.headers.get("upgrade", "").lower() == "websocket"


class WebSockets:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        self._keep_history = False

    def running(self) -> None:
        master = getattr(ctx, "master", None)
        view = master.addons.get("view") if master is not None else None
        self._keep_history = view is not None or bool(getattr(ctx.options, "save_stream_file", None))

    @fail_closed
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        if not self._keep_history and flow.websocket is not None and len(flow.websocket.messages) > 1:
            del flow.websocket.messages[:-1]
