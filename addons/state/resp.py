"""One pipelined connection to a Redis server for the state store's scripts (EVALSHA): the round
trip every call through the gateway makes when quotas live in Redis.

redis-py spends about 160 us of the gateway's CPU on one EVALSHA (its connection pool's lock and
condition, a retry wrapper, observability hooks, a connection checked out and back per command):
more than the rest of the call's quota work, and the one thing separating the Redis rows of the
bench from the memory ones. This lane writes each command onto one connection as it comes and
matches the replies in order (Redis answers a connection's commands in the order sent), with the
reply parsed by hiredis. Nothing else is sent on it.

Failure semantics are the store's (`RedisStore._run`): a command that cannot be sent or whose
connection is lost raises redis-py's ConnectionError, an error reply raises the exception class
redis-py would (NoScriptError for NOSCRIPT, AuthenticationError...), and the caller's deadline
cancels its wait only: the reply still owed is read and dropped, so the order holds and the other
commands on the connection are unaffected. A connection whose oldest unanswered command is older
than `STALL_S` (a stopped server, a partition without a reset) is closed, failing what waits on it,
and the next command connects anew; commands waiting on one connection are bounded
(`MAX_PENDING`). Only a plain TCP `redis://` server uses it; TLS, Unix sockets, Sentinel and
Cluster stay on redis-py throughout."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError

MAX_PENDING = 4096  # commands in flight on the connection; past it a command fails at once
STALL_S = 1.0  # a command unanswered this long: the connection is given up
# Unparsed bytes held for a reply still incomplete. The scripts answer with a few integers; a server
# announcing a huge reply (or never finishing one) must not grow the gateway's memory.
MAX_REPLY_BUFFER = 1 << 20


def encode(args: tuple[Any, ...]) -> bytes:
    """A command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        # Each command's future and when it was sent, in the order sent (= the order of the replies).
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        if self.reader.len() > MAX_REPLY_BUFFER:
            self._fail(RedisConnectionError(f"reply larger than {MAX_REPLY_BUFFER} bytes"))
            if self.transport is not None:
                self.transport.close()
            return
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:  # not RESP: nothing after it can be trusted
                self._fail(RedisConnectionError(f"protocol error: {exc}"))
                if self.transport is not None:
                    self.transport.close()
                return
            if reply is False:
                return
            if not self.waiting:  # a reply nobody asked for: the stream is out of step
                self._fail(RedisConnectionError("unexpected reply"))
                if self.transport is not None:
                    self.transport.close()
                return
            future, _ = self.waiting.popleft()
            if future.done():  # its caller gave up (deadline): the reply is dropped
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(BaseParser.parse_error(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection lost: {exc}" if exc else "connection closed by the server"))

    def _fail(self, exc: BaseException) -> None:
        self.lost = exc
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)


class RespLane:
    """One connection, opened when first needed and again after it is lost."""

    def __init__(self, host: str, port: int, *, username: str | None = None, password: str | None = None,
                 db: int = 0, connect_timeout: float = 1.0) -> None:
        self.host, self.port = host, port
        self._hello: list[tuple[Any, ...]] = []
        if password:
            self._hello.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._hello.append(("SELECT", db))
        self.connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def execute(self, *args: Any) -> Any:
        protocol = self._protocol
        if protocol is not None and protocol.waiting and \
                asyncio.get_running_loop().time() - protocol.waiting[0][1] > STALL_S:
            self._drop(protocol)  # fails what waits on it; this command connects anew
        if protocol is None or protocol.lost is not None:
            protocol = await self._connect()
        if len(protocol.waiting) >= MAX_PENDING:
            raise RedisConnectionError("too many commands waiting on the connection")
        return await self._send(protocol, encode(args))

    @staticmethod
    def _send(protocol: _Protocol, data: bytes) -> asyncio.Future[Any]:
        assert protocol.transport is not None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        protocol.waiting.append((future, loop.time()))
        protocol.transport.write(data)
        return future

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # one connect at a time; the others then use it
            protocol = self._protocol
            if protocol is not None and protocol.lost is None:
                return protocol
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.connect_timeout):
                    _, protocol = await loop.create_connection(_Protocol, self.host, self.port)
                    for command in self._hello:
                        await self._send(protocol, encode(command))
            except TimeoutError:
                if protocol is not None and protocol.transport is not None:
                    protocol.transport.close()
                raise RedisConnectionError(f"connect to {self.host}:{self.port} timed out") from None
            except OSError as exc:
                raise RedisConnectionError(f"connect to {self.host}:{self.port} failed: {exc.strerror or exc}") \
                    from exc
            except BaseException:  # AUTH or SELECT refused (the error says why), or the caller's deadline
                if protocol is not None and protocol.transport is not None:
                    protocol.transport.close()  # never left open, unused
                raise
            self._protocol = protocol
            return protocol

    def _drop(self, protocol: _Protocol) -> None:
        if self._protocol is protocol:
            self._protocol = None
        protocol._fail(RedisConnectionError("connection given up (no reply in time)"))
        if protocol.transport is not None:
            protocol.transport.close()

    def close(self) -> None:
        if self._protocol is not None:
            self._drop(self._protocol)
