"""WebSockets: through to hosts no service owns (identified callers), refused for services."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.harness import Gateway, write_rules


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str("echo:" + message.data)
    return ws


async def test_websocket_passes_through_and_is_refused_for_a_service(tmp_path: Path, confdir: Path) -> None:
    app = web.Application()
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rules = write_rules(tmp_path / "rules", {
        "svc.yaml": """
            service: svc
            hosts: [svc.test]
            upstream: {url: "http://127.0.0.1:1"}
        """,
        "apps.yaml": """
            apps:
              chat: {secret: chat-secret}
            gateway: {require_app: true, unknown_hosts: allow, egress: {allow_cidrs: [127.0.0.0/8]}}
        """,
    })
    gw = Gateway(rules, confdir)
    await asyncio.to_thread(gw.start)
    try:
        async with aiohttp.ClientSession(trust_env=False) as session:
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws", proxy=gw.proxy("chat", "chat-secret"),
                                          timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
                for i in range(50):
                    await ws.send_str(f"m{i}")
                    answer = await asyncio.wait_for(ws.receive_str(), 5)
                    assert answer == f"echo:m{i}"
            # Unidentified: refused before anything reaches the host.
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"http://127.0.0.1:{port}/ws", proxy=gw.proxy())
            assert refused.value.status == 407
            # A service's host: the gateway cannot hold a socket for a service call.
            with pytest.raises(aiohttp.WSServerHandshakeError) as service:
                await session.ws_connect("http://svc.test/ws", proxy=gw.proxy("chat", "chat-secret"))
            assert service.value.status == 400
    finally:
        await asyncio.to_thread(gw.stop)
        await runner.cleanup()
