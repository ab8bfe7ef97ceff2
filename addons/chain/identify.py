"""Who is calling (SPEC 7): Proxy-Authorization on the request or its CONNECT, a signed request, or
the client address. The caller's identity headers are removed here, so they never reach a provider."""

from __future__ import annotations

import time
from collections.abc import Awaitable

from mitmproxy import http

from addons.chain.context import GatewayContext, answer, fail, fail_closed
from addons.errors import Code, GatewayError
from addons.identity.directory import parse_basic
from addons.identity.signed import GATEWAY_HEADERS, SignedRequest
from addons.state.base import StateUnavailable

NONCE_TTL = 600.0  # twice the signature window: a replay inside the window is always remembered
CHALLENGE = {"Proxy-Authenticate": 'Basic realm="gateway"'}


class Identify:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        self.tunnels = gw.tunnels

    @fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        value = flow.request.headers.pop("proxy-authorization", None)
        if self.gw.compiled is None:
            return
        if value is None:
            # No byte is relayed for an unidentified caller (SPEC 12): whatever follows in the tunnel
            # (TLS, plain HTTP, raw TCP to a database) it is refused here, before the tunnel opens.
            peer = flow.client_conn.peername
            known = peer is not None and self.gw.compiled.apps.by_address(peer[0]) is not None
            if not known and self.gw.compiled.gateway.require_app:
                call = self.gw.call(flow)
                call.error = "CONNECT without proxy credentials"
                answer(flow, call, Code.CALLER_UNIDENTIFIED, "caller not identified: send app credentials "
                       "(Proxy-Authorization) on the CONNECT", headers=CHALLENGE)
                self.gw.finish(flow)
            return
        credentials = parse_basic(value)
        apps = self.gw.compiled.apps
        if credentials is None or not apps.check_password(*credentials):
            call = self.gw.call(flow)
            call.app = credentials[0] if credentials else None
            call.error = "wrong proxy credentials on CONNECT"
            answer(flow, call, Code.CALLER_UNIDENTIFIED, "caller not identified: wrong app credentials",
                   headers=CHALLENGE)
            self.gw.finish(flow)
            return
        self.tunnels[flow.client_conn] = credentials[0]

    def on_request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        call = self.gw.call(flow)
        compiled = self.gw.compiled
        if compiled is None:
            fail(flow, call, GatewayError(Code.GATEWAY_MISCONFIGURED, "gateway has no rules loaded"))
            return None
        headers = flow.request.headers
        proxy_auth = headers.pop("proxy-authorization", None)
        signed = self._signed(headers)
        try:
            if proxy_auth is not None:
                credentials = parse_basic(proxy_auth)
                if credentials is None or not compiled.apps.check_password(*credentials):
                    raise GatewayError(Code.CALLER_UNIDENTIFIED, "caller not identified: wrong app credentials",
                                       headers=CHALLENGE)
                call.app = credentials[0]
            elif flow.client_conn in self.tunnels:
                call.app = self.tunnels[flow.client_conn]
            elif signed is not None:
                return self._identify_signed(flow, signed)  # the nonce needs the store: wait for it
            else:
                peer = flow.client_conn.peername
                call.app = compiled.apps.by_address(peer[0]) if peer else None
            self._require(flow)
        except GatewayError as error:
            fail(flow, call, error)
        return None

    def _require(self, flow: http.HTTPFlow) -> None:
        compiled = self.gw.compiled
        if self.gw.call(flow).app is None and compiled is not None and compiled.gateway.require_app:
            raise GatewayError(Code.CALLER_UNIDENTIFIED, "caller not identified: send app credentials "
                               "(Proxy-Authorization) or a signed request", headers=CHALLENGE)

    async def _identify_signed(self, flow: http.HTTPFlow, signed: SignedRequest) -> None:
        call = self.gw.call(flow)
        try:
            await self._verify(flow, signed)
            call.app = signed.app
        except GatewayError as error:
            fail(flow, call, error)

    def _signed(self, headers: http.Headers) -> SignedRequest | None:
        if not any(name[:10].lower() == b"x-gateway-" for name, _ in headers.fields):
            return None  # the usual case: one pass over the raw fields instead of four lookups
        values = [headers.pop(name, None) for name in GATEWAY_HEADERS]
        if values[0] is None and values[3] is None:
            return None
        app, timestamp, nonce, signature = (v or "" for v in values)
        return SignedRequest(app, timestamp, nonce, signature)

    async def _verify(self, flow: http.HTTPFlow, signed: SignedRequest) -> None:
        assert self.gw.compiled is not None and self.gw.store is not None
        request = flow.request
        path = request.path if request.method != "CONNECT" else request.authority
        self.gw.compiled.apps.verify_signature(signed, request.method, path, request.raw_content or b"", time.time())
        try:
            first = await self.gw.store.first_use(f"nonce:{signed.app}:{signed.nonce}", NONCE_TTL)
        except StateUnavailable as exc:
            # state_failure: closed and Redis down (the store logged the outage once), or a
            # gateway_redis that cannot work (named in /status).
            why = "gateway_redis misconfigured, see /status" if getattr(exc, "misconfigured", False) \
                else "state_failure: closed"
            raise GatewayError(Code.GATEWAY_INTERNAL, f"nonce store unavailable ({why})") from None
        if not first:
            raise GatewayError(Code.CALLER_SIGNATURE, "request replayed (nonce already used)")
