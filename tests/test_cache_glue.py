"""The cache's glue in process (mitmproxy tflow): a hit is answered without awaiting, followers of
a leader that ended without an answer ask the provider themselves, a hit skips per-service quotas."""

from __future__ import annotations

import asyncio

from mitmproxy.test import tflow, tutils

from addons.cache.policy import HIT, MISS
from addons.chain.cache import Cache, CachedForward, CacheLookup
from addons.chain.context import GatewayContext, answer
from addons.rules.router import Route
from addons.rules.schema import ServiceSpec

SPEC = ServiceSpec.model_validate({"service": "geo", "upstream": {"url": "http://geo.test"},
                                   "cache": {"ttl": "1m"}, "methods": {"g": {"path": "/g"}}})


class ProviderStep:
    """Stands where Forward stands: answers code 0, counts calls, may be told to fail."""

    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        self.calls = 0
        self.release = asyncio.Event()
        self.crash_first = False  # the first call raises (our own code failing mid-call)

    async def on_request(self, flow) -> None:  # type: ignore[no-untyped-def]
        self.calls += 1
        await self.release.wait()
        if self.crash_first and self.calls == 1:
            raise RuntimeError("boom")
        call = self.gw.call(flow)
        call.attempts, call.target = 1, "primary"
        answer(flow, call, 0, "success", {"n": self.calls})


def flow_for(gw: GatewayContext):  # type: ignore[no-untyped-def]
    flow = tflow.tflow(req=tutils.treq(host="geo.test", path=b"/g?a=1"))
    call = gw.call(flow)
    call.service, call.method, call.app = "geo", "g", "a"
    call.route = Route("geo", "g", SPEC, SPEC.methods["g"], "/g")
    return flow


async def until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    """Let the other tasks run until `condition` holds (bounded: a few hundred loop turns)."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def run(steps, flow) -> None:  # type: ignore[no-untyped-def]
    for step in steps:
        if flow.response is not None:
            return
        try:
            pending = step.on_request(flow)
            if pending is not None:
                await pending
        except RuntimeError:
            return


async def test_followers_share_the_leaders_answer_and_a_hit_needs_no_await() -> None:
    gw = GatewayContext()
    cache = Cache(gw)
    provider = ProviderStep(gw)
    steps = (CacheLookup(gw, cache), CachedForward(gw, cache, provider))
    flows = [flow_for(gw) for _ in range(5)]
    tasks = [asyncio.ensure_future(run(steps, f)) for f in flows]
    await until(lambda: all(gw.call(f).cache is not None for f in flows), "every call looked up")
    assert provider.calls == 1 and len(cache.flights) == 1
    provider.release.set()
    await asyncio.gather(*tasks)
    results = sorted(gw.call(f).cache.result for f in flows)  # type: ignore[union-attr]
    assert results == [HIT] * 4 + [MISS]
    assert all(f.response.status_code == 200 for f in flows)

    later = flow_for(gw)
    assert steps[0].on_request(later) is None and gw.call(later).cache.spares_provider  # type: ignore[union-attr]
    assert steps[1].on_request(later) is None and later.response is not None
    assert later.response.headers["X-Gateway-Cache"] == "hit" and provider.calls == 1


async def test_followers_of_a_leader_that_crashed_go_on_their_own() -> None:
    gw = GatewayContext()
    cache = Cache(gw)
    provider = ProviderStep(gw)
    provider.crash_first = True
    steps = (CacheLookup(gw, cache), CachedForward(gw, cache, provider))
    leader, follower = flow_for(gw), flow_for(gw)
    first = asyncio.ensure_future(run(steps, leader))
    await until(lambda: provider.calls == 1, "the leader at the provider")
    second = asyncio.ensure_future(run(steps, follower))
    await until(lambda: gw.call(follower).cache is not None, "the follower looked up")
    assert gw.call(follower).cache.flight is not None  # type: ignore[union-attr]
    provider.release.set()
    await asyncio.gather(first, second)
    assert provider.calls == 2 and follower.response is not None and follower.response.status_code == 200
    assert len(cache.flights) == 0
