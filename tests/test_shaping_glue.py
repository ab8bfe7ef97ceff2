"""The shaping glue in process (mitmproxy test flows, the real Identify/Route/Quota steps, a memory
store): the wait is bounded by the retry deadline, a disconnect ends a waiting call, the fast path
stays synchronous."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

from mitmproxy.test import tflow, tutils

from addons.chain.context import CallPipeline, GatewayContext
from addons.chain.identify import Identify
from addons.chain.quota import Quota
from addons.chain.route import Route
from addons.chain.rules import CredentialContext
from addons.chain.shaping import Shaping
from addons.rules.loader import load_sources
from addons.runtime import compile_rules
from addons.state.memory import MemoryStore


def gateway(tmp_path: Path, quota: str, timeout: str = "5s") -> tuple[GatewayContext, Shaping, CallPipeline]:
    rules, problems = load_sources([
        ("s.yaml", f"service: s\nhosts: [api.s.test]\nupstream: {{url: 'http://127.0.0.1:9', timeout: {timeout}}}\n"
                   f"quota: {quota}\nmethods: {{m: {{path: /m}}}}\n"),
        ("apps.yaml", "apps: {a: {secret: secret-a-123}}\n"),
    ], tmp_path, env={})
    assert problems == []
    gw = GatewayContext()
    shaping = Shaping(gw)
    gw.compiled, _ = compile_rules(rules, None, CredentialContext(gw))
    for listener in gw.on_rules_changed:
        listener(gw.compiled)
    gw.store = MemoryStore()
    return gw, shaping, CallPipeline(gw, Identify(gw), Route(gw), Quota(gw))


def flow_of(tag: str) -> tflow.HTTPFlow:
    flow = tflow.tflow(req=tutils.treq(host="api.s.test", port=80, path=f"/m?tag={tag}".encode()))
    flow.request.headers["Proxy-Authorization"] = "Basic " + base64.b64encode(b"a:secret-a-123").decode()
    return flow


def code(flow: tflow.HTTPFlow) -> int | None:
    if flow.response is None:
        return None  # admitted: the next step (Forward) would send it
    return int(json.loads(flow.response.content or b"{}")["code"])


async def test_no_queue_and_no_block_takes_the_plain_synchronous_path(tmp_path: Path) -> None:
    gw, _, _ = gateway(tmp_path, "[{limit: 1/s, per: service}]")
    flow = flow_of("x")
    await CallPipeline(gw, Identify(gw), Route(gw)).request(flow)
    assert Quota(gw).on_request(flow) is None  # decided without an awaitable
    assert code(flow) is None


async def test_a_queued_call_never_waits_past_its_retry_deadline(tmp_path: Path) -> None:
    # queue: 5s, but the call's deadline is its 200 ms timeout: it may wait at most 0.2 s.
    _, shaping, pipeline = gateway(tmp_path, "[{limit: 1/s, per: service, queue: 5s}]", timeout="200ms")
    while 1 - time.time() % 1 < 0.6:
        await asyncio.sleep(0.01)
    first = flow_of("first")
    await pipeline.request(first)
    assert code(first) is None
    second = flow_of("second")
    started = time.monotonic()
    await pipeline.request(second)
    # The next second's room is further away than the deadline: refused at once, not after waiting.
    assert code(second) == -2004
    assert time.monotonic() - started < 0.2
    assert shaping.status()["queue"]["waiting"] == 0


async def test_a_disconnect_ends_a_waiting_call_and_empties_the_queue(tmp_path: Path) -> None:
    gw, shaping, pipeline = gateway(tmp_path, "[{limit: 1/s, per: service, queue: 5s}]")
    # Start well inside a second, so the second call must wait for the next edge.
    while 1 - time.time() % 1 < 0.5:
        await asyncio.sleep(0.01)
    first = flow_of("first")
    await pipeline.request(first)
    assert code(first) is None
    second = flow_of("second")
    task = asyncio.create_task(pipeline.request(second))
    for _ in range(100):
        if shaping.status()["queue"]["waiting"] == 1:
            break
        await asyncio.sleep(0.005)
    assert shaping.status()["queue"] == {"waiting": 1, "max": 1000, "by_service": {"s": 1}}
    shaping.client_disconnected(second.client_conn)
    await asyncio.wait_for(task, 1)
    assert code(second) == -2004
    assert gw.call(second).error == "caller disconnected while waiting for room"
    assert shaping.status()["queue"]["waiting"] == 0
    # The next edge admits a newcomer: the one that left took no room.
    third = flow_of("third")
    await asyncio.wait_for(pipeline.request(third), 2)
    assert code(third) is None
