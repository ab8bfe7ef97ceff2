"""Admits a call only if every quota that applies to it has room (SPEC 8), in one step."""

from __future__ import annotations

import time

from mitmproxy import http

from addons.chain.context import GatewayContext, fail, fail_closed
from addons.errors import Code, GatewayError
from addons.quota import admission_headers
from addons.state.base import StateUnavailable


class Quota:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        call = self.gw.call(flow)
        compiled = self.gw.compiled
        if flow.response is not None or compiled is None or call.route is None or self.gw.store is None:
            return
        now = time.time()
        checks = compiled.quotas(call.app, call.route, now)
        if not checks:
            return
        try:
            admission = await self.gw.store.admit(checks, now)
        except StateUnavailable as exc:
            call.error = f"state store unavailable: {exc}"
            fail(flow, call, GatewayError(Code.GATEWAY_INTERNAL, "quota state unavailable (state_failure: closed)"),
                 call.rule)
            return
        if admission.degraded:
            call.degraded = True
            call.headers["X-Gateway-Degraded"] = "state"
        call.headers.update(admission_headers(admission, checks, now))
        if not admission.admitted:
            refused = admission.refused
            scope = refused.scope if refused else "_"
            self.gw.metrics.quota_rejected(call.app, call.service, scope)
            limit = f" ({refused.limit} per {refused.window}s, {scope})" if refused else ""
            fail(flow, call, GatewayError(Code.CALLER_QUOTA, f"quota exceeded{limit}"), call.rule)
