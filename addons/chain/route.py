"""Which service and method a call is (SPEC 4), and whether its app may make it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from mitmproxy import http

from addons.chain.context import GatewayContext, fail, internal_error
from addons.chain.websocket import is_upgrade
from addons.errors import Code, GatewayError
from addons.rules.router import UNMATCHED

log = logging.getLogger("gateway")

EXPLICIT_HOST = "gateway.local"
STREAM_THRESHOLD = 1024 * 1024  # bodies above this pass through natively without being buffered
MAX_SERVICE_BODY = 64 * 1024 * 1024  # a service call's body is buffered (retries, signatures): capped


class Route:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        try:
            self._choose_streaming(flow)
        except Exception as exc:
            internal_error(self.gw, flow, "Route.requestheaders", exc)

    def _choose_streaming(self, flow: http.HTTPFlow) -> None:
        # Service calls are buffered: the gateway sends them itself and may retry or sign them.
        # Native pass-through (hosts no service owns) streams a large body instead, but a streamed
        # body goes upstream before the `request` hook identifies the caller: so only when egress to
        # unknown hosts is allowed and the caller is already known (its tunnel's CONNECT, or no app
        # required). Otherwise the body is buffered and checked like any other call.
        compiled = self.gw.compiled
        host = self.gw.call(flow).host
        if compiled is None or host == EXPLICIT_HOST:
            return
        length = flow.request.headers.get("content-length", "")
        if compiled.router.owner(host) is not None:
            flow.request.stream = False
            if length.isdigit() and int(length) > MAX_SERVICE_BODY:
                # A service call's body is buffered whole, and mitmproxy reads a request's body before
                # it sends any answer: the only way not to read it is to close the connection now.
                call = self.gw.call(flow)
                call.code, call.status = Code.CALLER_INVALID, 413
                call.error = (f"request body of {length} bytes is larger than the "
                              f"{MAX_SERVICE_BODY // (1024 * 1024)} MiB a service call takes; connection closed")
                flow.kill()
            return
        gateway = compiled.gateway
        known = flow.client_conn in self.gw.tunnels or not gateway.require_app
        large = length.isdigit() and int(length) > STREAM_THRESHOLD
        flow.request.stream = large and known and gateway.unknown_hosts == "allow"

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = self.gw.calls.get(flow)
        if call is None or not call.passthrough or flow.response is None:
            return
        try:
            flow.response.headers["X-Request-ID"] = call.request_id
            length = flow.response.headers.get("content-length", "")
            if flow.response.headers.get("content-type", "").startswith("text/event-stream") or (
                    length.isdigit() and int(length) > STREAM_THRESHOLD):
                flow.response.stream = True  # server-sent events and large downloads pass as they come
        except Exception as exc:  # the answer is the provider's; it still goes to the caller
            log.error("gateway: responseheaders failed for %s: %s", call.request_id, type(exc).__name__)

    def on_request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        call = self.gw.call(flow)
        compiled = self.gw.compiled
        assert compiled is not None
        request = flow.request
        try:
            if call.host == EXPLICIT_HOST:
                parts = request.path.split("?", 1)[0].strip("/").split("/")
                if len(parts) != 2 or not all(parts):
                    raise GatewayError(Code.CALLER_INVALID, f"call http://{EXPLICIT_HOST}/<service>/<method>")
                route = compiled.router.explicit(parts[0], parts[1], dict(request.query))
            else:
                route = compiled.router.match(call.host, request.path, request.method)
            if route is None:
                call.passthrough = True
                if compiled.gateway.unknown_hosts == "deny":
                    raise GatewayError(Code.CALLER_FORBIDDEN,
                                       f"egress to {call.host} is not allowed (no service owns it)")
                request.headers["X-Request-ID"] = call.request_id
                request.headers.pop("x-gateway-envelope", None)
                # Where it may go is checked on the resolved address (SPEC 12): that needs DNS.
                return self.gw.egress.admit(flow, call) if self.gw.egress is not None else None
            call.route = route
            call.service, call.method = route.service, route.method
            if is_upgrade(request):
                raise GatewayError(Code.CALLER_INVALID, f"{route.name}: WebSockets to a service are not "
                                   "supported (the gateway sends service calls itself)")
            if route.disabled is not None:
                call.error = route.disabled.reason
                raise GatewayError(Code.GATEWAY_MISCONFIGURED,
                                   f"{route.service} is disabled: the gateway is missing its configuration")
            if route.method == UNMATCHED and route.spec is not None and route.spec.unmatched == "deny":
                raise GatewayError(Code.CALLER_INVALID, f"{route.service}: no such method for {request.method} "
                                   f"{route.path}")
            if call.app is not None and not compiled.apps.allowed(call.app, route.name):
                raise GatewayError(Code.CALLER_FORBIDDEN, f"app {call.app} may not call {route.name}")
            app_spec = compiled.rules.apps.get(call.app) if call.app else None
            override = request.headers.pop("x-gateway-envelope", None)
            mode = override if override in ("raw", "unified") else (app_spec.envelope if app_spec else None)
            runtime = compiled.services.get(route.service)
            call.raw = mode == "raw" if mode else bool(runtime and runtime.raw)
        except GatewayError as error:
            fail(flow, call, error, None)
        return None
