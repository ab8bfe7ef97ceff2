"""An exception in one of our hooks must never let a call through (mitmproxy would forward it)."""

from __future__ import annotations

import asyncio
import json

from mitmproxy.proxy.layers.http import HttpResponseHook
from mitmproxy.test import tflow, tutils

from addons.chain.context import GatewayContext, fail_closed


class Exploding:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw

    @fail_closed
    async def request(self, flow: object) -> None:
        raise RuntimeError("secret-value-in-exception-text")


async def test_a_raising_hook_answers_3002_and_hides_the_exception_text(caplog: object) -> None:
    gw = GatewayContext()
    flow = tflow.tflow(req=tutils.treq(host="api.example.test"))
    await Exploding(gw).request(flow)
    assert flow.response is not None
    assert flow.response.status_code == 500
    body = json.loads(flow.response.content or b"")
    assert body["code"] == -3002 and body["source"] == "gateway"
    assert flow.response.headers["X-Gateway-Code"] == "-3002"
    assert "secret-value-in-exception-text" not in flow.response.text
    assert "secret-value-in-exception-text" not in caplog.text  # type: ignore[attr-defined]


# -- every flow and connection hook of the chain ------------------------------------------------------

SET_UP_HOOKS = {"load", "configure", "running", "done", "update", "add_log"}


def _event_hooks() -> set[str]:
    import mitmproxy.addonmanager  # each module registers the hooks it defines
    import mitmproxy.proxy.layers.dns
    import mitmproxy.proxy.layers.http
    import mitmproxy.proxy.layers.tcp
    import mitmproxy.proxy.layers.tls
    import mitmproxy.proxy.layers.websocket
    import mitmproxy.proxy.server_hooks  # noqa: F401
    from mitmproxy import hooks

    return set(hooks.all_hooks) - SET_UP_HOOKS


def test_every_event_hook_of_the_chain_fails_closed() -> None:
    import addons.gateway as gateway

    names = _event_hooks()
    assert {"request", "http_connect", "websocket_message", "client_connected", "server_connect"} <= names
    seen: list[str] = []
    for addon in gateway.addons:
        for name in sorted(names):
            hook = getattr(addon, name, None)
            if hook is None:
                continue
            seen.append(f"{type(addon).__name__}.{name}")
            assert getattr(hook, "fails_closed", False), f"{type(addon).__name__}.{name} is not @fail_closed"
    # The ones a reader might doubt are among them.
    assert {"HideProxyAuth.requestheaders", "HideProxyAuth.request", "WebSockets.websocket_message",
            "Egress.server_connect", "ClientConnections.client_connected", "CallPipeline.request",
            "AccessLogger.response", "WebView.response", "Identify.http_connect"} <= set(seen)


class _Raising:
    """Anything whose use raises: stands in for a part an addon's hook relies on."""

    def __getattr__(self, name: str) -> object:
        raise RuntimeError("secret-value-in-exception-text")

    def __len__(self) -> int:
        raise RuntimeError("secret-value-in-exception-text")


def test_hide_proxy_auth_failing_in_request_answers_3002() -> None:
    from addons.chain.webview import HideProxyAuth

    addon = HideProxyAuth(GatewayContext())
    addon._held = _Raising()  # type: ignore[assignment]
    flow = tflow.tflow(req=tutils.treq(host="api.example.test"))
    addon.request(flow)
    assert flow.response is not None and flow.response.status_code == 500
    assert json.loads(flow.response.content or b"")["code"] == -3002


def test_websockets_failing_on_a_message_closes_the_socket() -> None:
    from addons.chain.websocket import WebSockets

    flow = tflow.twebsocketflow()
    flow.websocket = _Raising()  # type: ignore[assignment]
    WebSockets(GatewayContext()).websocket_message(flow)
    assert flow.error is not None and flow.error.msg == "Connection killed."


def test_a_failing_client_connected_closes_the_client() -> None:
    from addons.chain.connections import ClientConnections

    addon = ClientConnections(GatewayContext())
    addon.tracker = _Raising()  # type: ignore[assignment]
    client = tflow.tclient_conn()
    addon.client_connected(client)
    assert client.error == "gateway internal error"


def test_a_failing_server_connect_refuses_the_connection() -> None:
    from mitmproxy.proxy import server_hooks

    from addons.chain.egress import Egress

    class Server:
        error: str | None = None

        @property
        def via(self) -> object:
            raise RuntimeError("secret-value-in-exception-text")

    data = server_hooks.ServerConnectionHookData(Server(), tflow.tclient_conn())  # type: ignore[arg-type]
    asyncio.run(Egress(GatewayContext()).server_connect(data))
    assert data.server.error == "gateway internal error"


def test_a_failing_log_line_leaves_the_answer_and_the_stored_flow_is_still_cleaned(caplog: object) -> None:
    from mitmproxy.test import taddons

    from addons.chain.accesslog import AccessLogger
    from addons.chain.webview import WebView

    gw = GatewayContext()
    logger, view = AccessLogger(gw), WebView(gw)
    flow = tflow.tflow(req=tutils.treq(host="api.example.test", headers=((b"authorization", b"Bearer s3cr3t"),)),
                       resp=True)
    gw.call(flow).code = 0
    class Script:  # as mitmproxy loads gateway.py: one script, its addons as children
        addons = [logger, view]

    with taddons.context(Script()) as tctx:
        view._storing = True  # as with a flow store (mitmweb, -w): the stored request is cleaned
        gw.finish = lambda flow: (_ for _ in ()).throw(RuntimeError("secret-value-in-exception-text"))
        logger._finish = gw.finish  # type: ignore[method-assign]
        before = flow.response.content if flow.response else None
        tctx.master.addons.trigger(HttpResponseHook(flow))
    assert flow.response is not None and flow.response.content == before  # the answer stands
    assert flow.request.headers["authorization"] == "***"  # WebView's hook still ran after the failure
    assert "secret-value-in-exception-text" not in caplog.text  # type: ignore[attr-defined]
