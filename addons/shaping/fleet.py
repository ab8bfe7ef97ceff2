"""The provider's quota shared by a fleet through Redis, at no cost per call.

An instance that learns "service S is spent until T" writes the key `<prefix>pq:S` (value T, TTL
ending at T) and publishes `S T` on the channel `<prefix>pq`, in one pipelined round trip. Every
instance subscribes to that channel and keeps what it hears in process, so a call checks the block
in memory: no Redis read on the hot path. The keys serve instances that start, or reconnect, later:
on each (re)subscription they are read once (one MGET of the configured services).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable

from redis.exceptions import RedisClusterException, RedisError

from addons.state.clients import connect, subscriber

log = logging.getLogger("gateway")

PUBLISH_TIMEOUT = 1.0
RECONNECT_MIN = 0.5
RECONNECT_MAX = 15.0
_MAX_MESSAGE = 256  # "service unix-time": anything longer is not ours


def parse_message(data: bytes | str) -> tuple[str, float] | None:
    """(service, until) from a channel message; None for anything malformed."""
    if isinstance(data, bytes):
        if len(data) > _MAX_MESSAGE:
            return None
        data = data.decode("utf-8", "replace")
    service, _, value = data.partition(" ")
    try:
        until = float(value)
    except ValueError:
        return None
    if not service or not math.isfinite(until):
        return None
    return service, until


class FleetBlocks:
    def __init__(self, url: str, on_block: Callable[[str, float], None], services: Callable[[], Iterable[str]],
                 prefix: str = "gw:") -> None:
        # Any engine (state/clients.py): a cluster takes the SET on the key's node and broadcasts the
        # PUBLISH; the subscription is a plain connection (to any node of a cluster).
        connected = connect(url, timeout=PUBLISH_TIMEOUT, connect_timeout=1.0, max_connections=4)
        self._client = connected.client
        self._cluster = connected.target.kind == "cluster"
        self._subscriber = subscriber(url, connect_timeout=1.0)
        self._on_block = on_block
        self._services = services
        self._key = prefix + "pq:"
        self._channel = prefix + "pq"
        self._task: asyncio.Task[None] | None = None
        self.subscribed = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen())

    async def publish(self, service: str, until: float, now: float) -> None:
        """Tell the fleet; bounded in time, and a failure only means the others learn on their own."""
        ttl_ms = max(1, int((until - now) * 1000))
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                if self._cluster:  # the key and the broadcast live on different nodes
                    await self._client.set(self._key + service, repr(until), px=ttl_ms)
                    await self._client.publish(self._channel, f"{service} {until!r}")
                else:
                    async with self._client.pipeline(transaction=False) as pipe:
                        pipe.set(self._key + service, repr(until), px=ttl_ms)
                        pipe.publish(self._channel, f"{service} {until!r}")
                        await pipe.execute()
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            log.warning("gateway: could not share %s's provider quota with the fleet (%s)", service,
                        type(exc).__name__)

    async def _read_keys(self) -> None:
        services = sorted(self._services())
        if not services:
            return
        keys = [self._key + s for s in services]
        # On a cluster the keys are in several slots: redis-py asks each node for its own.
        values = await (self._client.mget_nonatomic(keys) if self._cluster else self._client.mget(keys))
        for service, value in zip(services, values, strict=True):
            if value is not None and (parsed := parse_message(f"{service} {value.decode(errors='replace')}")):
                self._on_block(*parsed)

    async def _listen(self) -> None:
        delay = RECONNECT_MIN
        while True:
            pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                await self._read_keys()  # what was published while this instance was not listening
                self.subscribed = True
                delay = RECONNECT_MIN
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None or message.get("type") != "message":
                        continue
                    parsed = parse_message(message.get("data") or b"")
                    if parsed is not None:
                        self._on_block(*parsed)
            except asyncio.CancelledError:
                raise
            except (RedisError, RedisClusterException, OSError, TimeoutError, ValueError) as exc:
                if self.subscribed:
                    log.warning("gateway: fleet channel for provider quotas lost (%s); reconnecting",
                                type(exc).__name__)
                self.subscribed = False
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX, delay * 2)

    def stop(self) -> None:
        """Stop listening (a sync shutdown hook); close() also releases the connections."""
        if self._task is not None:
            self._task.cancel()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        for client in (self._client, self._subscriber):
            try:
                await client.aclose()
            except (RedisError, OSError):
                pass
