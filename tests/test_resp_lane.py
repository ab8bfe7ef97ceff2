"""The pipelined Redis lane of the state store (addons/state/resp.py): replies matched in order,
a caller's deadline affecting only that caller, hostile or stalled servers failing fast, and the
store exact under concurrency on a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import hiredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from addons.state import resp
from addons.state.base import QuotaCheck, StateUnavailable
from addons.state.redis import RedisStore
from addons.state.resp import RespLane
from tests.conftest import until


class FakeRedis:
    """A RESP server on 127.0.0.1 whose answers a test decides: `answer(command) -> bytes | None`
    (None: never answer). Records every command and counts connections."""

    def __init__(self, answer: Callable[[list[bytes]], Any]) -> None:
        self.answer = answer
        self.commands: list[list[bytes]] = []
        self.connections = 0
        self.closed = 0  # connections the client closed
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        parser = hiredis.Reader()
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    self.commands.append(command)
                    reply = self.answer(command)
                    if asyncio.iscoroutine(reply):
                        reply = await reply
                    if reply is not None:
                        writer.write(reply)
            self.closed += 1
        except ConnectionError:
            self.closed += 1
            pass
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeRedis]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self.server.close()


async def test_replies_are_matched_in_order_and_a_cancelled_wait_takes_only_its_own() -> None:
    served = 0

    async def answer(command: list[bytes]) -> bytes:
        nonlocal served
        served += 1
        if served == 1:
            await asyncio.sleep(0.2)  # the first command's answer comes late
        return b":%d\r\n" % served

    async with FakeRedis(answer).running() as fake:
        lane = RespLane("127.0.0.1", fake.port)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(lane.execute("GET", "a"), 0.05)
        assert await lane.execute("GET", "b") == 2  # not the late reply meant for the first
        assert await asyncio.gather(*(lane.execute("GET", str(i)) for i in range(50))) == list(range(3, 53))
        assert fake.connections == 1
        lane.close()


async def test_auth_and_select_are_sent_first_and_a_refusal_says_why() -> None:
    def answer(command: list[bytes]) -> bytes:
        if command[0] == b"AUTH":
            return b"+OK\r\n" if command[2] == b"right" else b"-WRONGPASS invalid username-password pair\r\n"
        return b"+OK\r\n"

    async with FakeRedis(answer).running() as fake:
        lane = RespLane("127.0.0.1", fake.port, username="gw", password="right", db=3)
        assert await lane.execute("PING") == b"OK"
        assert fake.commands[:3] == [[b"AUTH", b"gw", b"right"], [b"SELECT", b"3"], [b"PING"]]
        lane.close()
        wrong = RespLane("127.0.0.1", fake.port, username="gw", password="wrong")
        with pytest.raises(Exception, match=r"WRONGPASS|invalid username-password"):
            await wrong.execute("PING")
        wrong.close()


async def test_a_deadline_during_auth_leaves_no_connection_open() -> None:
    async with FakeRedis(lambda c: None).running() as fake:  # never answers AUTH
        lane = RespLane("127.0.0.1", fake.port, password="pw")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(lane.execute("PING"), 0.05)
        await until(lambda: fake.closed >= 1, 2, "the half-set-up connection closed")
        assert fake.commands == [[b"AUTH", b"pw"]]  # PING was never sent on it
        lane.close()


async def test_error_replies_raise_redis_pys_exceptions() -> None:
    async with FakeRedis(lambda c: b"-NOSCRIPT No matching script. Please use EVAL.\r\n").running() as fake:
        lane = RespLane("127.0.0.1", fake.port)
        with pytest.raises(NoScriptError):
            await lane.execute("EVALSHA", "0" * 40, 0)
        lane.close()


@pytest.mark.parametrize("garbage", [b"HTTP/1.1 200 OK\r\n\r\n", b"!!not resp\r\n"])
async def test_a_server_that_is_not_redis_fails_the_call_and_the_next_reconnects(garbage: bytes) -> None:
    async with FakeRedis(lambda c: garbage).running() as fake:
        lane = RespLane("127.0.0.1", fake.port)
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(RedisConnectionError):
                await lane.execute("PING")
            assert time.monotonic() - started < 1
        assert fake.connections == 2  # the broken connection was not used again
        lane.close()


async def test_a_huge_reply_is_refused_not_buffered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resp, "MAX_REPLY_BUFFER", 64 * 1024)
    # Announces a 1 GB bulk string and sends 128 KB of it: the lane gives up past its buffer bound.
    async with FakeRedis(lambda c: b"$1000000000\r\n" + b"x" * 128 * 1024).running() as fake:
        lane = RespLane("127.0.0.1", fake.port)
        with pytest.raises(RedisConnectionError, match="larger than"):
            await asyncio.wait_for(lane.execute("GET", "k"), 2)
        assert lane._protocol is None or lane._protocol.lost is not None
        lane.close()


async def test_a_reply_nobody_asked_for_drops_the_connection() -> None:
    async with FakeRedis(lambda c: b":1\r\n:2\r\n").running() as fake:  # two replies to one command
        lane = RespLane("127.0.0.1", fake.port)
        assert await lane.execute("PING") == 1

        await until(lambda: lane._protocol is None or lane._protocol.lost is not None, 2, "the connection dropped")
        assert await lane.execute("PING") == 1  # answered on a new connection
        assert fake.connections == 2
        lane.close()


async def test_a_stalled_connection_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resp, "STALL_S", 0.2)
    async with FakeRedis(lambda c: None).running() as fake:  # accepts, never answers
        lane = RespLane("127.0.0.1", fake.port)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(lane.execute("PING"), 0.05)
        await asyncio.sleep(0.25)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(lane.execute("PING"), 0.05)
        assert fake.connections == 2  # the second command did not queue behind the stalled one
        lane.close()


async def test_waiting_commands_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resp, "MAX_PENDING", 10)
    async with FakeRedis(lambda c: None).running() as fake:
        lane = RespLane("127.0.0.1", fake.port)
        waits = [asyncio.ensure_future(lane.execute("PING")) for _ in range(10)]
        await asyncio.sleep(0.05)
        with pytest.raises(RedisConnectionError, match="too many"):
            await lane.execute("PING")
        for wait in waits:
            wait.cancel()
        lane.close()


async def test_concurrent_admits_on_a_real_redis_are_exact_over_one_connection(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout=2.0)
    try:
        assert store._lane is not None  # a plain redis:// server: the lane carries the scripts
        check = QuotaCheck("svc:lane", 200, 3600)
        results = await asyncio.gather(*(store.admit([check], time.time()) for _ in range(300)))
        assert sum(r.admitted for r in results) == 200
        assert sorted(r.remaining[0] for r in results if r.admitted) == list(range(200))
    finally:
        await store.close()


async def test_a_stopped_lane_server_is_an_outage_not_a_hang() -> None:
    store = RedisStore("redis://127.0.0.1:1/0", timeout=0.2)  # nothing listens on port 1
    try:
        started = time.monotonic()
        with pytest.raises(StateUnavailable):
            await store.admit([QuotaCheck("svc:x", 1, 60)], time.time())
        assert time.monotonic() - started < 0.5
    finally:
        await store.close()
