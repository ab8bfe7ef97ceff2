"""Admits a call only if every quota that applies to it has room (SPEC 8), in one step."""

from __future__ import annotations

import time
from collections.abc import Awaitable

from mitmproxy import http

from addons.chain.context import GatewayContext, fail
from addons.errors import Code, GatewayError
from addons.quota import admission_headers
from addons.state.base import Admission, QuotaCheck, StateUnavailable
from addons.state.memory import MemoryStore


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
        shaped = self._shaped(flow, checks, now)
        if shaped is not None:
            return shaped
        if not checks:
            return None
        if isinstance(store, MemoryStore):
            # In-process counting needs no waiting: decide now, without a task switch.
            self._decide(flow, checks, store.admit_now(checks, now), now)
            return None
        return self._admit_shared(flow, checks, now)

    def _shaped(self, flow: http.HTTPFlow, checks: list[QuotaCheck], now: float) -> Awaitable[None] | None:
        """Queued entries and the provider's learned quota (SPEC 14) take the call over, when they apply."""
        shaping = self.gw.shaping
        return None if shaping is None else shaping.intercept(flow, checks, now, self._decide)

    async def _admit_shared(self, flow: http.HTTPFlow, checks: list[QuotaCheck], now: float) -> None:
        assert self.gw.store is not None
        call = self.gw.call(flow)
        try:
            admission = await self.gw.store.admit(checks, now)
        except StateUnavailable as exc:
            call.error = f"state store unavailable: {exc}"
            fail(flow, call, GatewayError(Code.GATEWAY_INTERNAL, "quota state unavailable (state_failure: closed)"),
                 call.rule)
            return
        self._decide(flow, checks, admission, now)

    def _decide(self, flow: http.HTTPFlow, checks: list[QuotaCheck], admission: Admission, now: float) -> None:
        call = self.gw.call(flow)
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
