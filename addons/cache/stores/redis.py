"""The fleet's store in Redis: one GET per lookup, one SET (with its expiry) per store.

Keys: `gwc:{service}.method:<sha256>`. The service is a hash tag, so on a Redis Cluster a
service's entries share a slot. An entry lives until its `stale_if_error` window ends; whether it
is still fresh is in the entry itself. A Redis that fails or does not answer in time is a miss (the
call goes to the provider) and is left alone for a second: the cache never fails or stalls a call."""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisClusterException, RedisError

from addons.cache.policy import Entry
from addons.state.clients import connect

log = logging.getLogger("gateway")

PREFIX = "gwc:"
_FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError)
RETRY_AFTER = 1.0  # seconds a failed Redis is not asked again
STATUS_SCAN_LIMIT = 10_000  # /status counts at most this many keys


def redis_key(key: str) -> str:
    service, _, rest = key.partition(".")
    return f"{PREFIX}{{{service}}}.{rest}"


class RedisCache:
    immediate = False

    def __init__(self, url: str, timeout: float = 2.0, connect_timeout: float = 1.0) -> None:
        # Any engine (state/clients.py); on a cluster the `{service}` hash tag keeps a service's
        # entries in one slot, so a purge's UNLINK of a batch touches one node.
        connected = connect(url, timeout=timeout, connect_timeout=connect_timeout, max_connections=8)
        self.client = connected.client
        # A cluster client discovers the cluster on first use; concurrent discoveries from many
        # calls at once break each other's connections, so one discovers and the others wait.
        self._discovered = connected.target.kind != "cluster"
        self._discovery = asyncio.Lock()
        self._down_until = 0.0
        self.errors = 0
        self.last_error: str | None = None

    def _usable(self) -> bool:
        return time.monotonic() >= self._down_until

    async def _discover(self) -> None:
        if not self._discovered:
            async with self._discovery:
                if not self._discovered:
                    await self.client.initialize()
                    self._discovered = True

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        if self._usable():
            log.warning("gateway: cache: Redis unavailable (%s); calls go to the provider meanwhile",
                        type(exc).__name__)
        self._down_until = time.monotonic() + RETRY_AFTER
        self.last_error = type(exc).__name__

    async def get(self, key: str) -> Entry | None:
        if not self._usable():
            return None
        try:
            await self._discover()
            blob = await self.client.get(redis_key(key))
        except _FAILURES as exc:
            self._failed(exc)
            return None
        if blob is None:
            return None
        try:
            entry = Entry.from_bytes(blob)
        except (ValueError, TypeError):
            return None  # not ours, or from an incompatible version: a miss, overwritten by the next store
        return entry if entry.stale_until > time.time() else None

    async def set(self, key: str, entry: Entry) -> None:
        ttl_ms = int((entry.stale_until - time.time()) * 1000)
        if ttl_ms <= 0 or not self._usable():
            return
        try:
            await self._discover()
            await self.client.set(redis_key(key), entry.to_bytes(), px=ttl_ms)
        except _FAILURES as exc:
            self._failed(exc)

    async def purge(self, service: str, method: str | None = None) -> int:
        pattern = f"{PREFIX}{{{service}}}.{method}:*" if method else f"{PREFIX}{{{service}}}.*"
        await self._discover()
        purged = 0
        batch: list[bytes] = []
        async for name in self.client.scan_iter(match=pattern, count=500):
            batch.append(name)
            if len(batch) >= 500:
                purged += await self.client.unlink(*batch)
                batch = []
        if batch:
            purged += await self.client.unlink(*batch)
        return purged

    async def status(self) -> dict[str, object]:
        entries = 0
        size = 0
        truncated = False
        try:
            await self._discover()
            async with self.client.pipeline(transaction=False) as pipe:
                names = []
                async for name in self.client.scan_iter(match=f"{PREFIX}*", count=1000):
                    names.append(name)
                    if len(names) >= STATUS_SCAN_LIMIT:
                        truncated = True
                        break
                for name in names:
                    pipe.strlen(name)
                sizes = await pipe.execute() if names else []
            entries, size = len(names), sum(int(s) for s in sizes)
        except _FAILURES as exc:
            return {"backend": "redis", "available": False, "error": type(exc).__name__}
        return {"backend": "redis", "available": True, "entries": entries, "bytes": size,
                "counted_up_to": STATUS_SCAN_LIMIT if truncated else None, "errors": self.errors}

    async def close(self) -> None:
        await self.client.aclose()
