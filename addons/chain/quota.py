"""Admits a call only if every quota that applies to it has room (SPEC 8), in one step."""

from __future__ import annotations

import time
from collections.abc import Awaitable

from mitmproxy import http

from addons.chain.context import GatewayContext, fail
from addons.errors import Code, GatewayError
from addons.quota.policy import admission_headers, per_app_only
from addons.state.base import Admission, QuotaCheck, StateUnavailable


class Quota:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw

    def on_request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        call = self.gw.call(flow)
        compiled = self.gw.compiled
        store = self.gw.store
        if compiled is None or call.route is None or store is None:
            return None
        now = time.time()
        checks = compiled.quotas(call.app, call.route, now)
        # A cached answer (or one shared with an identical call in flight) never reaches the provider:
        # only the app's own quotas count it, and the provider's learned quota does not hold it back.
        spares_provider = call.cache is not None and call.cache.spares_provider
        if spares_provider:
            checks = per_app_only(checks)
        shaped = self._shaped(flow, checks, now, provider=not spares_provider)
        if shaped is not None:
            return shaped
        if not checks:
            return None
        # A store that can decide without waiting (in-process counting) does so here, without a
        # task switch; the others are awaited.
        admission = store.admit_now(checks, now)
        if admission is not None:
            self._decide(flow, checks, admission, now)
            return None
        return self._admit_shared(flow, checks, now)

    def _shaped(self, flow: http.HTTPFlow, checks: list[QuotaCheck], now: float,
                provider: bool = True) -> Awaitable[None] | None:
        """Queued entries and the provider's learned quota (SPEC 14) take the call over, when they apply."""
        shaping = self.gw.shaping
        return None if shaping is None else shaping.intercept(flow, checks, now, self._decide, provider)

    async def _admit_shared(self, flow: http.HTTPFlow, checks: list[QuotaCheck], now: float) -> None:
        assert self.gw.store is not None
        call = self.gw.call(flow)
        try:
            admission = await self.gw.store.admit(checks, now)
        except StateUnavailable as exc:
            call.error = f"state store unavailable: {exc}"
            why = ("gateway_redis misconfigured, see /status" if getattr(exc, "misconfigured", False)
                   else "state_failure: closed")
            fail(flow, call, GatewayError(Code.GATEWAY_INTERNAL, f"quota state unavailable ({why})"), call.rule)
            return
        self._decide(flow, checks, admission, now)

    def _decide(self, flow: http.HTTPFlow, checks: list[QuotaCheck], admission: Admission, now: float) -> None:
        call = self.gw.call(flow)
        if admission.degraded:
            call.degraded = True
            call.headers["X-Gateway-Degraded"] = "state"
        call.headers.update(admission_headers(admission, checks, now))
        self.gw.quota_use.note(checks, admission, now)
        if not admission.admitted:
            refused = admission.refused
            scope = refused.scope if refused else "_"
            self.gw.metrics.quota_rejected(call.app, call.service, scope)
            limit = f" ({refused.limit} per {refused.window}s, {scope})" if refused else ""
            fail(flow, call, GatewayError(Code.CALLER_QUOTA, f"quota exceeded{limit}"), call.rule)
