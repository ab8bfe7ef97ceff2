"""Which service and method a call is (SPEC 4), and whether its app may make it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from mitmproxy import http

from addons.cache.policy import BYPASS
from addons.chain.cache import HEADER as CACHE_HEADER
from addons.chain.cache import cache_spec
from addons.chain.connections import write_answer
from addons.chain.context import GatewayContext, fail, fail_closed, internal_error
from addons.chain.identify import CHALLENGE
from addons.chain.websocket import is_upgrade
from addons.chain.webview import proxy_authorization
from addons.errors import Code, GatewayError
from addons.explicit import EXPLICIT_HOST, json_object, template_params
from addons.identity.directory import parse_basic
from addons.limits import MAX_BODY
from addons.rules.router import UNMATCHED
from addons.rules.router import Route as RuleRoute

log = logging.getLogger("gateway")

STREAM_THRESHOLD = 1024 * 1024  # bodies above this pass through natively without being buffered
MAX_SERVICE_BODY = MAX_BODY  # a service call's body is buffered (retries, signatures): capped


class Route:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw

    @fail_closed
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
        if compiled is None:
            return
        request = flow.request
        host = self.gw.call(flow).host
        length = request.headers.get("content-length", "")
        chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
        has_body = chunked or (length.isdigit() and int(length) > 0) or (bool(length) and not length.isdigit())
        if has_body and self._unidentified(flow):
            # Nothing is read, let alone buffered, for a caller that cannot be identified: answered
            # now and closed (mitmproxy would read the whole body before any answer could go out).
            self._refuse(flow, Code.CALLER_UNIDENTIFIED, 407, "caller not identified: send app credentials "
                         "(Proxy-Authorization) or a signed request",
                         "unidentified caller sent a request body; answered before reading it, connection closed",
                         CHALLENGE)
            return
        service = host == EXPLICIT_HOST or compiled.router.owner(host) is not None
        if service:
            request.stream = False
            if length.isdigit() and int(length) > MAX_SERVICE_BODY:
                # A service call's body is buffered whole, and mitmproxy reads a request's body before
                # it sends any answer: the only way not to read it is to answer now and close.
                self._refuse(flow, Code.CALLER_INVALID, 413,
                             f"request body larger than the {MAX_SERVICE_BODY // (1024 * 1024)} MiB a service "
                             "call takes",
                             f"request body of {length} bytes is larger than the "
                             f"{MAX_SERVICE_BODY // (1024 * 1024)} MiB a service call takes; connection closed")
            return
        gateway = compiled.gateway
        known = flow.client_conn in self.gw.tunnels or not gateway.require_app
        # A chunked body has no length to judge: streamed too (buffering it would be unbounded).
        large = chunked or (length.isdigit() and int(length) > STREAM_THRESHOLD)
        request.stream = large and known and gateway.unknown_hosts == "allow"

    def _unidentified(self, flow: http.HTTPFlow) -> bool:
        """True when the request's headers already show that the caller will be refused (-2001):
        no or wrong Basic credentials, no tunnel identity, no signature headers, no known address."""
        compiled = self.gw.compiled
        if compiled is None or not compiled.gateway.require_app or flow.client_conn in self.gw.tunnels:
            return False
        headers = flow.request.headers
        if "x-gateway-signature" in headers or "x-gateway-app" in headers:
            return False  # verified over the body in the request hook (bounded by MAX_SERVICE_BODY)
        proxy_auth = proxy_authorization(flow)
        if proxy_auth is not None:
            credentials = parse_basic(proxy_auth)
            return credentials is None or not compiled.apps.check_password(*credentials)
        peer = flow.client_conn.peername
        return not (peer and compiled.apps.by_address(peer[0]))

    def _refuse(self, flow: http.HTTPFlow, code: int, status: int, message: str, detail: str,
                headers: dict[str, str] | None = None) -> None:
        """Answer a call from its headers alone and close the connection, leaving its body unread."""
        call = self.gw.call(flow)
        call.code, call.status, call.message, call.error = code, status, message, detail
        write_answer(flow, call.request_id, code, status, message, headers)
        flow.kill()

    @fail_closed
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
        route: RuleRoute | None
        try:
            if call.host == EXPLICIT_HOST:
                parts = request.path.split("?", 1)[0].strip("/").split("/")
                if len(parts) != 2 or not all(parts):
                    raise GatewayError(Code.CALLER_INVALID, f"call http://{EXPLICIT_HOST}/<service>/<method>")
                fields = json_object(request.raw_content or b"", request.headers.get("content-type", ""))
                route = compiled.router.explicit(parts[0], parts[1], template_params(dict(request.query), fields))
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
            if cache_spec(call) is not None:  # a cached method refused before the cache was asked
                call.headers[CACHE_HEADER] = BYPASS
            fail(flow, call, error, None)
        return None
