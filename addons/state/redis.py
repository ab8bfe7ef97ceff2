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

The engine is named by the URL (engines.py, SPEC 15): one server, Redis Cluster or Sentinel, each
through redis-py's own client. A quota counter's key carries a hash tag (`q:{s:wechat}svc:wechat:...`,
see engines.slot_tag) so that every quota of one service lands in one cluster slot. A Lua script
may only touch keys of one slot on a cluster; the admission is therefore one script per slot:

- all of a call's quotas in one slot (always on one server or Sentinel; on a cluster whenever the
  call has no app-wide quota): one script, one round trip, exactly as on one server;
- quotas in several slots (an app-wide quota next to a service quota): the slots are visited one
  after another, in a fixed order; each script admits and counts its slot's quotas only if all of
  them have room (atomic in that slot). If a later slot refuses, the counts already taken in the
  earlier slots are given back (ROLLBACK_LUA), so the call counts nowhere. No counter ever goes
  above its limit, because every increment is decided by the script that owns the counter; the
  price is that a call refused in a later slot holds its earlier counts for one round trip, and a
  call arriving in that instant may be refused although the final count would have had room.

Starting (`verify`), a URL that cannot work is told apart from an outage: a wrong password, TLS
that does not verify, a cluster behind `redis://` or a plain server behind `redis+cluster://`
raise StateMisconfigured; a refused or silent server is an outage (StateUnavailable).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import ssl
from collections.abc import Awaitable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio.connection import Connection
from redis.exceptions import (
    AuthenticationError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from addons.state.base import Admission, QuotaCheck, StateUnavailable
from addons.state.clients import connect
from addons.state.engines import RedisTarget, parse_redis_url, slot_tag
from addons.state.resp import RespLane

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

# Give back the counts a multi-slot admission took in this slot before a later slot refused.
ROLLBACK_LUA = """
for i = 1, #KEYS do
  if (tonumber(redis.call('GET', KEYS[i])) or 0) > 0 then
    redis.call('DECR', KEYS[i])
  end
end
return 1
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


class StateMisconfigured(StateUnavailable):
    """`gateway_redis` names something the gateway cannot use: not an outage, a mistake to fix."""

    misconfigured = True


_TRANSIENT = (RedisError, RedisClusterException, OSError, TimeoutError)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def misconfiguration(exc: BaseException) -> str | None:
    """What is wrong with the configuration, if `exc` says so; None for an outage."""
    for item in _chain(exc):
        if isinstance(item, AuthenticationError) or "WRONGPASS" in str(item) or "NOAUTH" in str(item):
            return "authentication failed (wrong or missing password in gateway_redis)"
        if isinstance(item, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(item):
            return ("TLS certificate does not verify (give the CA as rediss://...?ssl_ca_certs=PATH): "
                    + _describe(item))
        if isinstance(item, ssl.SSLError):
            return f"TLS handshake failed: {_describe(item)}"
        if isinstance(item, RedisClusterException) and "cluster" in str(item).lower() and \
                "not enabled" in str(item).lower():
            return "a redis+cluster:// URL names a server that is not in cluster mode; use redis://"
    return None


class RedisStore:
    """StateStore over one Redis, a Redis Cluster or a Sentinel-managed master, shared by every
    gateway instance (see the module docstring)."""

    backend = "redis"

    def __init__(self, url: str, *, prefix: str = "gw:", timeout: float = 0.05,
                 connect_timeout: float | None = None, max_connections: int = 8) -> None:
        """`timeout`: seconds a whole operation may take (waiting for a connection, connecting,
        the command): a stalled Redis costs a call no more. `connect_timeout` (default: `timeout`)
        for a new connection. `max_connections` caps the connections (per node on a cluster);
        calls beyond it wait for a free one. ValueError for a URL that names no engine."""
        self.target: RedisTarget = parse_redis_url(url)
        self.kind = self.target.kind
        self.url = redact_url(url) if self.kind == "single" else _redact_multi(url)
        self.prefix = prefix
        self.timeout = timeout
        self.connect_timeout = min(timeout, timeout if connect_timeout is None else connect_timeout)
        # One ceiling for the whole operation: a stopped Redis (SIGSTOP) used to cost a call the
        # wait for a pooled connection plus the socket timeout, twice the documented timeout.
        self._deadline = timeout
        # A bounded number of connections: a burst of concurrent calls queues for a few connections
        # instead of opening one socket each. Opening hundreds at once on one event loop takes longer
        # than the connect timeout and would fail calls while Redis is perfectly healthy; a few
        # connections carry more than one Python process can send (8 at ~0.2 ms a round trip: some
        # 40,000 calls a second). redis-py's cluster and sentinel pools raise instead of waiting
        # when full, so the waiting is this semaphore's, for every engine alike.
        self._slots = asyncio.Semaphore(max_connections)
        self._discovery = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        # No retries inside the client (state/clients.py): the fallback decides what a failure means.
        connected = connect(url, timeout=timeout, connect_timeout=self.connect_timeout,
                            max_connections=max_connections, blocking=True)
        self._client: Any = connected.client
        self._pool: Any = connected.pool
        if connected.sentinel is not None:
            self._sentinel = connected.sentinel
        self._lane = _lane_for(self._pool, self.connect_timeout) if self.kind == "single" else None
        self._admit_sha = self._sha(ADMIT_LUA)
        self._rollback_sha = self._sha(ROLLBACK_LUA)
        self._release_sha = self._sha(RELEASE_LUA)
        self._q = prefix + "q:"
        self._n = prefix + "n:"
        self._v = prefix + "v:"
        self._l = prefix + "l:"

    @staticmethod
    def _sha(script: str) -> str:
        return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()

    async def _evalsha(self, sha: str, script: str, keys: list[str], args: list[str | int]) -> object:
        run = self._client.evalsha if self._lane is None else self._lane_evalsha
        try:
            return await run(sha, len(keys), *keys, *args)
        except NoScriptError:
            # First use on this server, or it restarted / was flushed: load once, then run by hash.
            # (On a cluster SCRIPT LOAD goes to every master.)
            await self._client.script_load(script)
            return await run(sha, len(keys), *keys, *args)

    def _lane_evalsha(self, sha: str, numkeys: int, *keys_and_args: str | int) -> Awaitable[Any]:
        assert self._lane is not None
        return self._lane.execute("EVALSHA", sha, numkeys, *keys_and_args)

    async def _run(self, what: Any) -> Any:
        """Run one operation (a zero-argument coroutine function) within the deadline."""
        try:
            async with asyncio.timeout(self._deadline):
                if self.kind == "cluster" and getattr(self._client, "_initialize", False):
                    # Discover the cluster once, not from every call that finds it undiscovered
                    # (concurrent discoveries were seen to break each other's connections).
                    async with self._discovery:
                        if getattr(self._client, "_initialize", False):
                            await self._client.initialize()
                async with self._slots:
                    return await what()
        except _TRANSIENT as exc:
            await self._drop_idle(exc)
            problem = misconfiguration(exc)
            if problem is not None:
                raise StateMisconfigured(f"redis: {problem}") from exc
            raise StateUnavailable(f"redis: {_describe(exc)}") from exc

    async def _drop_idle(self, exc: BaseException) -> None:
        """After a connection failure, close every idle pooled connection at once.

        Those were opened to the same server and are as dead as the one that failed (a restarted
        Redis closed them all): using them one by one made the store flap between reachable and
        unreachable for minutes, each flap a few calls decided locally. (The cluster client does
        the same per node by itself.)"""
        # Not on a timeout: a stalled server's connections are not known to be dead, and closing
        # them could wait on it.
        if self._pool is None or not isinstance(exc, (RedisConnectionError, ConnectionError)):
            return
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._pool.disconnect(inuse_connections=False)
        except Exception:  # closing dead sockets must not turn into another failure
            pass

    # -- quotas ---------------------------------------------------------------------------------

    def _counter(self, check: QuotaCheck, start: int) -> str:
        return f"{self._q}{{{slot_tag(check.key)}}}{check.key}:{check.window}:{start}"

    async def admit(self, checks: list[QuotaCheck], now: float) -> Admission:
        """All-or-nothing; one EVALSHA (one round trip) when every check lives in one slot.

        `checks` must not repeat a (key, window) pair (quota_checks() guarantees it)."""
        if not checks:
            return Admission(True)
        keys: list[str] = []
        args: list[str | int] = []
        for check in checks:
            start = check.window_start(now)
            keys.append(self._counter(check, start))
            args.append(check.limit)
            args.append(int((start + check.window - now) * 1000) + EXPIRY_GRACE_MS)
        groups: dict[str, list[int]] = {}
        if self.kind == "cluster":
            for i, check in enumerate(checks):
                groups.setdefault(slot_tag(check.key), []).append(i)
        if len(groups) <= 1:
            reply = await self._run(lambda: self._evalsha(self._admit_sha, ADMIT_LUA, keys, args))
            return self._admission(checks, reply)
        return await self._run(lambda: self._admit_in_slots(checks, keys, args, groups))

    def admit_now(self, checks: list[QuotaCheck], now: float) -> None:
        """Never decided without a round trip to Redis: the caller awaits admit()."""
        return None

    async def _admit_in_slots(self, checks: list[QuotaCheck], keys: list[str], args: list[str | int],
                              groups: dict[str, list[int]]) -> Admission:
        """Slot by slot (sorted, so every instance visits them in one order); give back on refusal."""
        remaining = [0] * len(checks)
        taken: list[list[int]] = []
        try:
            for tag in sorted(groups):
                index = groups[tag]
                part_args: list[str | int] = []
                for i in index:
                    part_args += [args[2 * i], args[2 * i + 1]]
                reply = await self._evalsha(self._admit_sha, ADMIT_LUA, [keys[i] for i in index], part_args)
                part = self._admission([checks[i] for i in index], reply)
                for i, left in zip(index, part.remaining, strict=True):
                    remaining[i] = left
                if not part.admitted:
                    # Cleared first: whatever happens below, nothing is given back twice (which
                    # would let the fleet admit one call too many).
                    pending, taken = taken, []
                    await self._give_back(keys, pending)
                    return Admission(False, part.refused, tuple(remaining))
                taken.append(index)
        except BaseException:
            # Failed half way (an outage, or the deadline): try to give back what was taken, without
            # waiting for it. What cannot be given back stays counted until its window ends: the
            # fleet then admits less, never more.
            if taken:
                task = asyncio.get_running_loop().create_task(self._give_back_quietly(keys, taken))
                self._background.add(task)  # referenced until done, or the loop may drop it
                task.add_done_callback(self._background.discard)
            raise
        return Admission(True, None, tuple(remaining))

    async def _give_back(self, keys: list[str], taken: list[list[int]]) -> None:
        for index in taken:
            await self._evalsha(self._rollback_sha, ROLLBACK_LUA, [keys[i] for i in index], [])

    async def _give_back_quietly(self, keys: list[str], taken: list[list[int]]) -> None:
        try:
            async with asyncio.timeout(self._deadline):
                await self._give_back(keys, taken)
        except (*_TRANSIENT, asyncio.CancelledError):
            pass

    @staticmethod
    def _admission(checks: list[QuotaCheck], reply: object) -> Admission:
        if not isinstance(reply, list) or len(reply) != len(checks) + 2:
            raise StateUnavailable(f"redis: unexpected admission reply {reply!r:.100}")
        remaining = tuple(int(r) for r in reply[2:])
        if int(reply[0]) == 1:
            return Admission(True, None, remaining)
        return Admission(False, checks[int(reply[1])], remaining)

    # -- nonces, values, locks ------------------------------------------------------------------

    async def first_use(self, key: str, ttl: float) -> bool:
        created = await self._run(lambda: self._client.set(self._n + key, b"1", nx=True, px=_ms(ttl)))
        return bool(created)

    async def get(self, key: str) -> bytes | None:
        value = await self._run(lambda: self._client.get(self._v + key))
        return value if value is None else bytes(value)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._run(lambda: self._client.set(self._v + key, value, px=_ms(ttl)))

    async def acquire(self, key: str, ttl: float) -> str | None:
        token = secrets.token_hex(16)
        taken = await self._run(lambda: self._client.set(self._l + key, token, nx=True, px=_ms(ttl)))
        return token if taken else None

    async def release(self, key: str, token: str) -> None:
        await self._run(lambda: self._evalsha(self._release_sha, RELEASE_LUA, [self._l + key], [token]))

    async def ping(self) -> None:
        await self._run(lambda: self._client.ping())

    async def verify(self) -> None:
        """Check that the URL names the engine it says, reachable with these credentials.

        StateMisconfigured for a mistake (see misconfiguration()), StateUnavailable for an outage."""
        if self.kind == "sentinel":
            await self._verify_sentinel()
        await self.ping()
        if self.kind == "single":
            info = await self._run(lambda: self._client.info("server"))
            mode = info.get("redis_mode") if isinstance(info, dict) else None
            if mode == "cluster":
                raise StateMisconfigured("redis: the server is a Redis Cluster node; use "
                                         "redis+cluster://host:port[,host:port...]")
            if mode == "sentinel":
                raise StateMisconfigured("redis: the server is a Sentinel; use "
                                         "redis+sentinel://host:port[,host:port...]/MASTER")

    async def _verify_sentinel(self) -> None:
        master = self.target.master
        answered = False
        for sentinel in self._sentinel.sentinels:
            try:
                async with asyncio.timeout(self._deadline):
                    masters = await sentinel.sentinel_masters()
            except _TRANSIENT as exc:
                problem = misconfiguration(exc)
                if problem is not None:
                    raise StateMisconfigured(f"redis: sentinel: {problem}") from exc
                if isinstance(exc, ResponseError):
                    raise StateMisconfigured(f"redis: {sentinel_name(sentinel)} is not a Sentinel "
                                             f"({_describe(exc)})") from exc
                continue
            answered = True
            if master in masters:
                return
        if answered:
            raise StateMisconfigured(f"redis: no Sentinel monitors a master named {master!r}")
        raise StateUnavailable(f"redis: no Sentinel of {self.url} answered")

    async def close(self) -> None:
        if self._lane is not None:
            self._lane.close()
        try:
            await self._client.aclose()
        except (RedisError, OSError):
            pass  # closing a client whose server is gone must not fail a shutdown

    def status(self) -> dict[str, object]:
        return {"backend": self.backend, "engine": self.kind, "url": self.url, "prefix": self.prefix}


def _lane_for(pool: Any, connect_timeout: float) -> RespLane | None:
    """The pipelined lane for the scripts (addons/state/resp.py), on a plain TCP server only."""
    if pool is None or pool.connection_class is not Connection:
        return None  # TLS or a Unix socket: redis-py's connections
    kwargs = pool.connection_kwargs
    return RespLane(kwargs.get("host", "localhost"), int(kwargs.get("port", 6379)),
                    username=kwargs.get("username"), password=kwargs.get("password"),
                    db=int(kwargs.get("db", 0) or 0), connect_timeout=connect_timeout)


def sentinel_name(sentinel: Any) -> str:
    kwargs = getattr(sentinel.connection_pool, "connection_kwargs", {})
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def _redact_multi(url: str) -> str:
    """A cluster or sentinel URL with its passwords replaced by `***`."""
    scheme, _, rest = url.partition("://")
    netloc, sep, tail = rest.partition("/")
    if "?" in netloc:
        netloc, q, query = netloc.partition("?")
        tail, sep = q + query, ""
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = userinfo.split(":", 1)[0] + ":***@" + hosts
    out = f"{scheme}://{netloc}{sep}{tail}"
    if "sentinel_password=" in out:
        head, _, after = out.partition("sentinel_password=")
        out = head + "sentinel_password=***" + ("&" + after.split("&", 1)[1] if "&" in after else "")
    return out
