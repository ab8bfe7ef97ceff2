"""The shared state store in Redis: quotas exact across every gateway instance, nonces and tokens shared.

Every call is bounded by short socket and connect timeouts and made without redis-py's own retries,
so an outage costs a call tens of milliseconds, not seconds; any failure becomes StateUnavailable
and the caller (FallbackStore, SPEC 8 `state_failure`) decides. The connection pool reconnects by
itself: a pooled connection found closed is reopened on its next use, so no restart is needed when
Redis comes back.

Keys (after the configurable prefix, default `gw:`):
  q:{key}:{window}:{window_start}   quota counter, expires shortly after its window ends
  n:{key}                           nonce seen (SET NX EX)
  v:{key}                           cached value (tokens)
  l:{key}                           lock, value = the holder's random token
The window length is part of the counter key because a minute and an hour window share their start
at every full hour; without it the two quotas would count into one counter.

The admission script touches several keys in one call, so all of them must live on one Redis node
(a single Redis, or Sentinel-managed primary); Redis Cluster is not supported.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from addons.state.base import Admission, QuotaCheck, StateUnavailable

# Check every counter first and refuse without counting if any is full; otherwise count them all.
# Atomic because Redis runs a script alone: no other instance's admission can interleave.
# KEYS[i]: counter of check i.  ARGV[2i-1]: its limit.  ARGV[2i]: ms it has left to live.
# Returns {admitted 1|0, refused index (0-based) or -1, remaining of check 1, ..., of check n}.
ADMIT_LUA = """
local n = #KEYS
local counts = redis.call('MGET', unpack(KEYS))
for i = 1, n do
  local c = tonumber(counts[i]) or 0
  counts[i] = c
  if c >= tonumber(ARGV[2 * i - 1]) then
    local out = {0, i - 1}
    for j = 1, n do
      out[j + 2] = math.max(0, tonumber(ARGV[2 * j - 1]) - (tonumber(counts[j]) or 0))
    end
    return out
  end
end
local out = {1, -1}
for i = 1, n do
  local c = redis.call('INCR', KEYS[i])
  if c == 1 then
    redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
  end
  out[i + 2] = tonumber(ARGV[2 * i - 1]) - c
end
return out
"""

# Delete the lock only if it is still ours: after our TTL ran out someone else may hold it.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Counters outlive their window by this much so an instance whose clock runs slightly behind still
# finds (and adds to) the count of a window the others have just closed, instead of recreating it
# at zero and admitting a fresh batch. The expiry is relative (PEXPIRE, computed from the gateway's
# `now`), so the Redis server's own clock does not matter.
EXPIRY_GRACE_MS = 2000


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***`, for logs and /status."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


class RedisStore:
    """StateStore over one Redis (redis:// or rediss:// URL), shared by every gateway instance."""

    backend = "redis"

    def __init__(self, url: str, *, prefix: str = "gw:", timeout: float = 0.05,
                 connect_timeout: float | None = None, max_connections: int = 8) -> None:
        """`timeout`: seconds a Redis answer may take; `connect_timeout` (default: `timeout`) for a
        new connection. `max_connections` caps the pool; calls beyond it wait for a free connection."""
        self.url = redact_url(url)
        self.prefix = prefix
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        # The whole operation (connect, handshake, script load, command) also has a ceiling, so that
        # nothing inside the client can stall a call however it fails.
        self._deadline = 2 * (self.connect_timeout + timeout)
        # A bounded pool: a burst of concurrent calls queues for a few connections instead of
        # opening one socket each. Opening hundreds at once on one event loop takes longer than the
        # connect timeout and would fail calls while Redis is perfectly healthy; a few
        # connections carry more than one Python process can send (8 at ~0.2 ms a round trip:
        # some 40,000 calls a second).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=self._deadline,  # waiting for a free connection is bounded too
            socket_timeout=timeout,
            socket_connect_timeout=self.connect_timeout,
            # No retries inside the client: the fallback decides what a failure means, and a retry
            # with backoff would multiply the time an outage costs every call.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._client = aioredis.Redis.from_pool(pool)
        self._admit_sha = self._sha(ADMIT_LUA)
        self._release_sha = self._sha(RELEASE_LUA)
        self._q = prefix + "q:"
        self._n = prefix + "n:"
        self._v = prefix + "v:"
        self._l = prefix + "l:"

    @staticmethod
    def _sha(script: str) -> str:
        return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()

    async def _evalsha(self, sha: str, script: str, keys: list[str], args: list[str | int]) -> object:
        try:
            return await self._client.evalsha(sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
        except NoScriptError:
            # First use on this server, or it restarted / was flushed: load once, then run by hash.
            await self._client.script_load(script)
            return await self._client.evalsha(sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]

    # -- quotas ---------------------------------------------------------------------------------

    async def admit(self, checks: list[QuotaCheck], now: float) -> Admission:
        """One EVALSHA (one round trip) decides and counts every check.

        `checks` must not repeat a (key, window) pair (quota_checks() guarantees it)."""
        if not checks:
            return Admission(True)
        keys: list[str] = []
        args: list[str | int] = []
        q = self._q
        for check in checks:
            start = check.window_start(now)
            keys.append(f"{q}{check.key}:{check.window}:{start}")
            args.append(check.limit)
            args.append(int((start + check.window - now) * 1000) + EXPIRY_GRACE_MS)
        try:
            async with asyncio.timeout(self._deadline):
                reply = await self._evalsha(self._admit_sha, ADMIT_LUA, keys, args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable(f"redis: {_describe(exc)}") from exc
        if not isinstance(reply, list) or len(reply) != len(checks) + 2:
            raise StateUnavailable(f"redis: unexpected admission reply {reply!r:.100}")
        remaining = tuple(int(r) for r in reply[2:])
        if int(reply[0]) == 1:
            return Admission(True, None, remaining)
        return Admission(False, checks[int(reply[1])], remaining)

    # -- nonces, values, locks ------------------------------------------------------------------

    async def first_use(self, key: str, ttl: float) -> bool:
        try:
            async with asyncio.timeout(self._deadline):
                created = await self._client.set(self._n + key, b"1", nx=True, px=_ms(ttl))
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable(f"redis: {_describe(exc)}") from exc
        return bool(created)

    async def get(self, key: str) -> bytes | None:
        try:
            async with asyncio.timeout(self._deadline):
                value = await self._client.get(self._v + key)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable(f"redis: {_describe(exc)}") from exc
        return value if value is None else bytes(value)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        try:
            async with asyncio.timeout(self._deadline):
                await self._client.set(self._v + key, value, px=_ms(ttl))
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable(f"redis: {_describe(exc)}") from exc

    async def acquire(self, key: str, ttl: float) -> str | None:
        token = secrets.token_hex(16)
        try:
            async with asyncio.timeout(self._deadline):
                taken = await self._client.set(self._l + key, token, nx=True, px=_ms(ttl))
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable(f"redis: {_describe(exc)}") from exc
        return token if taken else None

    async def release(self, key: str, token: str) -> None:
        try:
            async with asyncio.timeout(self._deadline):
                await self._evalsha(self._release_sha, RELEASE_LUA, [self._l + key], [token])
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable(f"redis: {_describe(exc)}") from exc

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self._deadline):
                await self._client.ping()  # type: ignore[misc]
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable(f"redis: {_describe(exc)}") from exc

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except (RedisError, OSError):
            pass  # closing a client whose server is gone must not fail a shutdown

    def status(self) -> dict[str, object]:
        return {"backend": self.backend, "url": self.url, "prefix": self.prefix}
