"""The upstream leg in process: `forwarder.forward` against an aiohttp server on 127.0.0.1, with the
service runtime the rules would build. What a caller would notice: the verdict, the attempts, the
target that answered, failover to the backup, the deadline."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from addons.outbound import OutboundRequest
from addons.rules.schema import ServiceSpec
from addons.runtime import ServiceRuntime
from addons.upstream.forwarder import forward, make_session


class _Credentials:
    def for_service(self, spec: Any) -> Any:
        return self


class Provider:
    """A provider whose answers a test scripts: each request takes the next (status, body)."""

    def __init__(self, answers: list[tuple[int, bytes]]) -> None:
        self.answers = answers
        self.seen: list[tuple[float, str, str]] = []  # (monotonic time, method, path)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((time.monotonic(), request.method, request.path_qs))
        status, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return web.Response(status=status, body=body, content_type="application/json")


async def _serve(provider: Provider) -> TestServer:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", provider.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def session() -> AsyncIterator[Any]:
    s = make_session()
    yield s
    await s.close()


def _runtime(url: str, **spec: Any) -> ServiceRuntime:
    return ServiceRuntime(ServiceSpec.model_validate({"service": "svc", "upstream": {"url": url}, **spec}),
                          _Credentials())


def _request(path: str = "/v1/thing?x=1", method: str = "GET") -> OutboundRequest:
    base, _, query = path.partition("?")
    return OutboundRequest(method, "http", "placeholder.test", 80, base,
                           [tuple(p.split("=", 1)) for p in query.split("&") if p])  # type: ignore[misc]


async def test_a_success_is_classified_and_sent_once_to_the_base_path(session: Any) -> None:
    provider = Provider([(200, b'{"errcode": 0, "id": 7}')])
    server = await _serve(provider)
    try:
        runtime = _runtime(f"http://127.0.0.1:{server.port}/base", envelope="wechat")
        result = await forward(runtime, _request(), "svc.get", "get", session)
    finally:
        await server.close()
    assert (result.code, result.data, result.attempts, result.target) == (0, {"id": 7}, 1, "primary")
    assert [(m, p) for _, m, p in provider.seen] == [("GET", "/base/v1/thing?x=1")]


async def test_a_503_is_retried_within_the_backoff_cap_then_succeeds(session: Any) -> None:
    provider = Provider([(503, b"{}"), (200, b'{"ok": true}')])
    server = await _serve(provider)
    try:
        runtime = _runtime(f"http://127.0.0.1:{server.port}",
                           retry={"attempts": 3, "backoff": "100ms", "max_backoff": "100ms"})
        result = await forward(runtime, _request(), "svc.get", "get", session)
    finally:
        await server.close()
    assert (result.code, result.attempts) == (0, 2)
    gap = provider.seen[1][0] - provider.seen[0][0]
    assert 0.0 < gap < 0.1 + 0.5, gap  # full jitter: a wait of at most the 100 ms cap (plus a loaded machine)


async def test_a_post_without_an_idempotency_key_is_not_repeated(session: Any) -> None:
    provider = Provider([(503, b"{}"), (200, b"{}")])
    server = await _serve(provider)
    try:
        runtime = _runtime(f"http://127.0.0.1:{server.port}", retry={"attempts": 3, "backoff": "10ms"})
        result = await forward(runtime, _request(method="POST"), "svc.create", "create", session)
    finally:
        await server.close()
    assert result.code == -1003 and result.attempts == 1 and len(provider.seen) == 1


async def test_a_refused_primary_fails_over_to_the_backup(session: Any) -> None:
    provider = Provider([(200, b'{"from": "backup"}')])
    server = await _serve(provider)
    dead = TestServer(web.Application(), host="127.0.0.1")
    await dead.start_server()
    dead_port = dead.port
    await dead.close()  # nothing listens there now: connects are refused
    try:
        runtime = _runtime(f"http://127.0.0.1:{dead_port}", retry={"attempts": 2, "backoff": "10ms"},
                           upstream={"url": f"http://127.0.0.1:{dead_port}",
                                     "backup": f"http://127.0.0.1:{server.port}"})
        result = await forward(runtime, _request(), "svc.get", "get", session)
    finally:
        await server.close()
    assert result.verdict is not None and result.verdict.data == {"from": "backup"}  # spliced: parsed on demand
    assert (result.code, result.attempts, result.target) == (0, 2, "backup")


async def test_an_answer_past_the_deadline_is_a_timeout_not_a_hang(session: Any) -> None:
    async def slow(request: web.Request) -> web.Response:
        import asyncio

        await asyncio.sleep(5)
        return web.Response(text="{}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    started = time.monotonic()
    try:
        runtime = _runtime(f"http://127.0.0.1:{server.port}", upstream={
            "url": f"http://127.0.0.1:{server.port}", "timeout": "300ms"}, retry={"attempts": 1})
        result = await forward(runtime, _request(), "svc.get", "get", session)
    finally:
        await server.close()
    assert result.code == -1001 and "timed out" in result.message
    assert time.monotonic() - started < 2.0
