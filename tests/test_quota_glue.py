"""The quota step in process (mitmproxy tflow): an in-process store decides in the hook itself, a
shared one is awaited; the step asks the store, never its class."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.test import tflow, tutils

from addons.chain.context import GatewayContext
from addons.chain.quota import Quota
from addons.rules.loader import load_sources
from addons.runtime import compile_rules
from addons.state.fallback import FallbackStore
from addons.state.memory import MemoryStore
from addons.state.redis import RedisStore
from tests.fakes import refused_url

RULES = [
    ("geo.yaml", "service: geo\nupstream: {url: 'http://geo.test'}\nquota: [{limit: 2/min}]\n"
                 "methods: {g: {path: /g}}\n"),
    ("apps.yaml", "apps:\n  a: {secret: s}\n"),
]


class _Credentials:
    def for_service(self, spec: Any) -> Any:
        return self


def gateway(tmp_path: Path, store: Any) -> GatewayContext:
    rules, problems = load_sources(RULES, tmp_path, env={})
    assert problems == []
    gw = GatewayContext()
    gw.compiled, _ = compile_rules(rules, None, _Credentials())
    gw.store = store
    return gw


def call_flow(gw: GatewayContext) -> http.HTTPFlow:
    flow = tflow.tflow(req=tutils.treq(host="geo.test", path=b"/g"))
    call = gw.call(flow)
    call.app, call.service, call.method = "a", "geo", "g"
    assert gw.compiled is not None
    call.route = gw.compiled.router.match("geo.test", "/g", "GET")
    assert call.route is not None
    return flow


def test_an_in_process_store_decides_in_the_hook_without_awaiting(tmp_path: Path) -> None:
    gw = gateway(tmp_path, MemoryStore())
    step = Quota(gw)
    flows = [call_flow(gw) for _ in range(3)]
    for flow in flows:
        assert step.on_request(flow) is None  # decided here: no awaitable handed back
    assert [f.response for f in flows[:2]] == [None, None]
    refused = flows[2].response
    assert refused is not None and refused.status_code == 429
    assert json.loads(refused.content or b"")["code"] == -2004
    assert refused.headers["Retry-After"] and "RateLimit" in refused.headers


async def test_a_shared_store_is_awaited_and_its_outage_decided_by_the_policy(tmp_path: Path) -> None:
    redis_url = refused_url().replace("http://", "redis://")
    store = FallbackStore(RedisStore(redis_url, timeout=0.2), policy="open")
    gw = gateway(tmp_path, store)
    step = Quota(gw)
    try:
        flow = call_flow(gw)
        pending = step.on_request(flow)
        assert pending is not None  # Redis must be asked: the hook hands back the wait
        await pending
        assert flow.response is None and gw.call(flow).degraded  # Redis refused: counted locally
        assert gw.call(flow).headers["X-Gateway-Degraded"] == "state"
        assert store.errors == 1
    finally:
        await store.close()
