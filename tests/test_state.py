"""State stores against a real redis-server (tests/conftest.py): admission, nonces, values, locks, outages."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from addons.quota.policy import quota_checks
from addons.quota.schema import QuotaSpec
from addons.state.base import Admission, QuotaCheck, StateUnavailable
from addons.state.fallback import FallbackStore
from addons.state.memory import MemoryStore
from addons.state.redis import RedisStore, redact_url
from tests.conftest import RedisServer, until

# Redis timeouts for tests that are not about timeouts: the production default (50 ms) can be
# exceeded by a connection handshake on a machine busy with other work, which would turn an
# exactness test into a flaky one. Tests about failing fast use the defaults.
TIMEOUT = 0.5


async def next_second() -> float:
    """Sleep to just past the next whole second, so a test owns (almost) a whole 1 s window."""
    now = time.time()
    await asyncio.sleep(int(now) + 1 - now + 0.005)
    return time.time()


async def raw_int(url: str, key: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        value = await client.get(key)
    finally:
        await client.aclose()
    return int(value or 0)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[MemoryStore | RedisStore]:
    """The same semantics are required of both stores."""
    if request.param == "memory":
        s: MemoryStore | RedisStore = MemoryStore()
    else:
        s = RedisStore(request.getfixturevalue("redis_url"), timeout=TIMEOUT)
    yield s
    await s.close()


@pytest.fixture
async def restart_redis(redis_server: RedisServer) -> AsyncIterator[RedisServer]:
    """The shared server, started again after the test whatever happened to it."""
    yield redis_server
    if redis_server.proc is None:
        redis_server.start()


# -- admission semantics, both stores ------------------------------------------------------------


async def test_admits_up_to_the_limit_then_refuses(store: MemoryStore | RedisStore) -> None:
    check = QuotaCheck("svc:wechat", 3, 3600)
    now = time.time()
    results = [await store.admit([check], now) for _ in range(5)]
    assert [r.admitted for r in results] == [True, True, True, False, False]
    assert [r.remaining for r in results] == [(2,), (1,), (0,), (0,), (0,)]
    assert results[3].refused == check
    assert not any(r.degraded for r in results)


async def test_all_or_nothing(store: MemoryStore | RedisStore) -> None:
    """A method quota without room refuses the call, and the service quota is not charged for it."""
    service = QuotaCheck("svc:wechat", 100, 60, scope="service")
    method = QuotaCheck("m:wechat.send_msg|app:a", 2, 60, scope="method")
    now = 1_700_000_000.0
    assert (await store.admit([service, method], now)).remaining == (99, 1)
    assert (await store.admit([service, method], now)).remaining == (98, 0)
    refused = await store.admit([service, method], now)
    assert not refused.admitted
    assert refused.refused == method
    assert refused.remaining == (98, 0)  # the service counter still says 2 calls
    # The service alone still has exactly 98 left: the refused calls were not counted.
    assert (await store.admit([service], now)).remaining == (97,)


async def test_refused_index_points_at_first_full_check(store: MemoryStore | RedisStore) -> None:
    a = QuotaCheck("app:x", 1, 60, scope="app")
    b = QuotaCheck("svc:s", 1, 60)
    now = 1_700_000_000.0
    assert (await store.admit([b], now)).admitted
    refused = await store.admit([a, b], now)
    assert refused.refused == b and refused.remaining == (1, 0)
    assert (await store.admit([a], now)).admitted  # a was not charged by the refused call


async def test_windows_of_different_length_do_not_share_a_counter(store: MemoryStore | RedisStore) -> None:
    """At a full hour a minute window and an hour window start at the same second."""
    now = 1_700_002_800.0  # a full hour
    minute = QuotaCheck("svc:s", 1, 60)
    hour = QuotaCheck("svc:s", 5, 3600)
    assert minute.window_start(now) == hour.window_start(now)
    assert (await store.admit([minute, hour], now)).remaining == (0, 4)
    assert (await store.admit([hour], now)).remaining == (3,)


async def test_no_checks_admits(store: MemoryStore | RedisStore) -> None:
    assert (await store.admit([], time.time())).admitted


async def test_window_rollover_two_per_second(store: MemoryStore | RedisStore) -> None:
    check = QuotaCheck("svc:fast", 2, 1)
    start = await next_second()
    window = int(start)
    got = [(await store.admit([check], time.time())).admitted for _ in range(3)]
    assert int(time.time()) == window, "the machine is too slow to make 3 calls in one second"
    assert got == [True, True, False]

    async def admitted_again() -> Admission | None:
        result = await store.admit([check], time.time())
        return result if result.admitted else None

    again = await until(admitted_again, timeout=3, what="the next 1 s window")
    assert time.time() >= window + 1
    assert again.remaining == (1,)


async def test_day_window_in_shanghai_turns_at_1600_utc(store: MemoryStore | RedisStore) -> None:
    before = datetime(2024, 5, 1, 15, 59, 59, tzinfo=UTC).timestamp()
    edge = datetime(2024, 5, 1, 16, 0, 0, tzinfo=UTC).timestamp()
    morning = datetime(2024, 5, 1, 1, 0, 0, tzinfo=UTC).timestamp()  # 09:00 in Shanghai, same day
    spec = QuotaSpec(limit="1/day", per="app", tz="Asia/Shanghai")
    (check,) = quota_checks("a", None, "svc", [spec], "m", None, now=before)
    assert check.offset == 8 * 3600
    assert check.window_start(before) == datetime(2024, 4, 30, 16, 0, tzinfo=UTC).timestamp()
    assert check.window_start(edge) == edge
    assert check.reset_after(before) == 1

    assert (await store.admit([check], morning)).admitted
    assert not (await store.admit([check], before)).admitted  # same Shanghai day
    assert (await store.admit([check], edge)).admitted  # 00:00 in Shanghai: a new day


# -- nonces, values, locks, both stores ----------------------------------------------------------


async def test_nonce_is_accepted_once(store: MemoryStore | RedisStore) -> None:
    assert await store.first_use("nonce:a:0123456789", 300)
    assert not await store.first_use("nonce:a:0123456789", 300)
    assert await store.first_use("nonce:b:0123456789", 300)


async def test_nonce_is_forgotten_after_its_ttl(store: MemoryStore | RedisStore) -> None:
    assert await store.first_use("nonce:short", 0.2)
    assert not await store.first_use("nonce:short", 0.2)
    started = time.monotonic()
    assert await until(lambda: store.first_use("nonce:short", 10), timeout=3, what="nonce expiry")
    assert time.monotonic() - started >= 0.1


async def test_values_with_ttl(store: MemoryStore | RedisStore) -> None:
    assert await store.get("token:wechat") is None
    await store.set("token:wechat", b"abc", 60)
    assert await store.get("token:wechat") == b"abc"
    await store.set("token:wechat", b"def", 0.2)
    assert await store.get("token:wechat") == b"def"

    async def gone() -> bool:
        return await store.get("token:wechat") is None

    await until(gone, timeout=3, what="value expiry")


async def test_lock_is_exclusive_until_released(store: MemoryStore | RedisStore) -> None:
    token = await store.acquire("refresh:wechat", 10)
    assert token
    assert await store.acquire("refresh:wechat", 10) is None
    await store.release("refresh:wechat", "not-the-token")
    assert await store.acquire("refresh:wechat", 10) is None  # only the holder releases
    await store.release("refresh:wechat", token)
    second = await store.acquire("refresh:wechat", 10)
    assert second and second != token


async def test_lock_expires(store: MemoryStore | RedisStore) -> None:
    token = await store.acquire("refresh:amap", 0.2)
    assert token
    assert await store.acquire("refresh:amap", 0.2) is None
    started = time.monotonic()
    later = await until(lambda: store.acquire("refresh:amap", 5), timeout=3, what="lock expiry")
    assert time.monotonic() - started >= 0.1
    await store.release("refresh:amap", token)  # the stale holder cannot free the new holder's lock
    assert await store.acquire("refresh:amap", 5) is None
    await store.release("refresh:amap", later)


async def test_concurrent_lock_has_one_winner(store: MemoryStore | RedisStore) -> None:
    tokens = await asyncio.gather(*(store.acquire("refresh:race", 10) for _ in range(50)))
    assert sum(1 for t in tokens if t) == 1


# -- Redis: exactness across instances -----------------------------------------------------------


async def test_two_instances_admit_exactly_the_limit(redis_url: str) -> None:
    """Two clients, as two gateway processes would have, 200 concurrent calls, limit 50."""
    # The gateway's own timeout (2 s): 200 calls queue for 8 connections each, and the deadline
    # covers that wait, so the shorter test timeout fails this on a loaded machine.
    first, second = RedisStore(redis_url, timeout=2.0), RedisStore(redis_url, timeout=2.0)
    try:
        check = QuotaCheck("svc:shared", 50, 3600)
        now = time.time()
        results = await asyncio.gather(*((first, second)[i % 2].admit([check], now) for i in range(200)))
        assert sum(r.admitted for r in results) == 50
        assert {r.remaining for r in results if not r.admitted} == {(0,)}
        # Refused calls were not counted: the counter holds exactly the admitted calls.
        key = f"gw:q:{{s:shared}}svc:shared:3600:{check.window_start(now)}"
        assert await raw_int(redis_url, key) == 50
    finally:
        await first.close()
        await second.close()


async def test_counter_expires_with_its_window(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix="t1:", timeout=TIMEOUT)
    client = aioredis.Redis.from_url(redis_url)
    try:
        now = time.time()
        check = QuotaCheck("svc:ttl", 5, 60)
        await store.admit([check], now)
        key = f"t1:q:{{s:ttl}}svc:ttl:60:{check.window_start(now)}"
        ttl_ms = await client.pttl(key)
        to_window_end_ms = (check.window_start(now) + 60 - time.time()) * 1000
        # The window's rest plus a grace of 2 s for instances whose clock runs behind.
        assert to_window_end_ms + 1000 <= ttl_ms <= to_window_end_ms + 2100
    finally:
        await client.aclose()
        await store.close()


async def test_script_reloaded_after_flush(redis_url: str) -> None:
    """NOSCRIPT (Redis restarted or flushed) loads the script again within the same call."""
    store = RedisStore(redis_url, timeout=TIMEOUT)
    try:
        check = QuotaCheck("svc:flush", 10, 3600)
        assert (await store.admit([check], time.time())).remaining == (9,)
        client = aioredis.Redis.from_url(redis_url)
        await client.script_flush()
        await client.aclose()
        assert (await store.admit([check], time.time())).remaining == (8,)
    finally:
        await store.close()


async def test_redis_outage_fails_fast_and_reconnects(redis_url: str, restart_redis: RedisServer) -> None:
    store = RedisStore(redis_url)  # production timeouts
    try:
        check = QuotaCheck("svc:outage", 100, 3600)
        assert (await until(lambda: _admit_or_none(store, [check]), what="Redis")).remaining == (99,)
        assert await store.first_use("n1", 60)
        restart_redis.stop()
        for call in (lambda: store.admit([check], time.time()), lambda: store.first_use("n2", 60),
                     lambda: store.get("v"), lambda: store.set("v", b"1", 5),
                     lambda: store.acquire("l", 5), lambda: store.release("l", "t")):
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(StateUnavailable):
                    await call()
                assert time.monotonic() - started < 0.3
        restart_redis.start()
        # The same store object: its pool reconnects by itself.
        result = await until(lambda: _admit_or_none(store, [check]), timeout=5, what="Redis back")
        assert result.remaining == (99,)  # the restarted server starts empty
        assert await store.first_use("n1", 60)
    finally:
        await store.close()


async def test_silent_redis_costs_a_call_no_more_than_the_timeout() -> None:
    """A Redis that accepts connections but never answers (hung, or packets dropped)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes handshakes; nobody ever reads or answers
        port = silent.getsockname()[1]
        store = RedisStore(f"redis://127.0.0.1:{port}/0")  # production timeouts
        try:
            for call in (lambda: store.admit([QuotaCheck("svc:x", 1, 60)], time.time()),
                         lambda: store.first_use("n", 5), lambda: store.get("v")):
                started = time.monotonic()
                with pytest.raises(StateUnavailable):
                    await call()
                assert time.monotonic() - started < 0.3
        finally:
            await store.close()


async def _admit_or_none(store: RedisStore | FallbackStore, checks: list[QuotaCheck]) -> Admission | None:
    try:
        return await store.admit(checks, time.time())
    except StateUnavailable:
        return None


def test_redacted_url_hides_the_password() -> None:
    assert redact_url("redis://:s3cret@redis.internal:6380/2") == "redis://:***@redis.internal:6380/2"
    assert redact_url("redis://gw:s3cret@[::1]:6379/0") == "redis://gw:***@[::1]:6379/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    store = FallbackStore(RedisStore("redis://user:s3cret@127.0.0.1:1/0"))
    status = store.status()
    assert "s3cret" not in repr(status)
    assert status["url"] == "redis://user:***@127.0.0.1:1/0"
    assert status["backend"] == "redis" and status["available"] is True


# -- Fallback: state_failure policy ----------------------------------------------------------------


async def test_outage_open_then_closed_then_recovery(redis_url: str, restart_redis: RedisServer) -> None:
    events: list[tuple[bool, str]] = []
    hooked_errors: list[int] = []
    store = FallbackStore(RedisStore(redis_url, timeout=TIMEOUT), policy="open", instances=2,
                          on_state_change=lambda up, err: events.append((up, err)),
                          on_error=lambda: hooked_errors.append(1))
    check = QuotaCheck("svc:degrade", 10, 3600)
    try:
        for expected in (9, 8, 7):
            result = await store.admit([check], time.time())
            assert result.admitted and not result.degraded and result.remaining == (expected,)
        assert events == [] and store.errors == 0

        restart_redis.stop()
        results = []
        for _ in range(8):
            started = time.monotonic()
            results.append(await store.admit([check], time.time()))
            assert time.monotonic() - started < 0.3
        # Each instance now counts alone, against limit / instances = 5.
        assert [r.admitted for r in results] == [True] * 5 + [False] * 3
        assert all(r.degraded for r in results)
        assert results[-1].refused == check  # the configured quota is named, not its local share
        assert len(events) == 1 and events[0][0] is False and events[0][1]
        assert store.errors == 8 and len(hooked_errors) == 8
        status = store.status()
        assert status["available"] is False and status["degraded"] is True and status["last_error"]

        # Nonces, values and locks are served locally too.
        assert await store.first_use("nonce:x", 60)
        assert not await store.first_use("nonce:x", 60)
        await store.set("token:s", b"t", 60)
        assert await store.get("token:s") == b"t"
        token = await store.acquire("refresh:s", 10)
        assert token and await store.acquire("refresh:s", 10) is None
        await store.release("refresh:s", token)
        assert await store.acquire("refresh:s", 10)

        # Rules reload: closed refuses while Redis is away...
        store.configure(policy="closed")
        started = time.monotonic()
        with pytest.raises(StateUnavailable):
            await store.admit([check], time.time())
        with pytest.raises(StateUnavailable):
            await store.first_use("nonce:y", 60)
        assert time.monotonic() - started < 0.3
        # ...and back to open with one instance: the local counter (5) was kept, limit now 10.
        store.configure(policy="open", instances=1)
        more = [await store.admit([check], time.time()) for _ in range(6)]
        assert [r.admitted for r in more] == [True] * 5 + [False]
        assert len(events) == 1  # the outage was reported once

        restart_redis.start()
        store.configure(instances=2)
        result = await until(lambda: _not_degraded(store, [check]), timeout=5, what="exact counting again")
        assert result.remaining == (9,)  # the restarted Redis counts from zero, exactly
        assert (await store.admit([check], time.time())).remaining == (8,)
        assert events[1:] == [(True, "")]
        assert store.status()["available"] is True
    finally:
        await store.close()


async def _not_degraded(store: FallbackStore, checks: list[QuotaCheck]) -> Admission | None:
    result = await store.admit(checks, time.time())
    return None if result.degraded else result


async def test_closed_policy_raises(redis_url: str, restart_redis: RedisServer) -> None:
    events: list[tuple[bool, str]] = []
    store = FallbackStore(RedisStore(redis_url, timeout=TIMEOUT), policy="closed",
                          on_state_change=lambda up, err: events.append((up, err)))
    check = QuotaCheck("svc:closed", 10, 3600)
    try:
        assert (await store.admit([check], time.time())).admitted
        restart_redis.stop()
        for _ in range(5):
            started = time.monotonic()
            with pytest.raises(StateUnavailable):
                await store.admit([check], time.time())
            assert time.monotonic() - started < 0.3
        assert [up for up, _ in events] == [False]
        assert store.errors == 5
        # Tokens and locks are not quota decisions: served locally whatever the policy.
        await store.set("token:c", b"t", 60)
        assert await store.get("token:c") == b"t"
    finally:
        await store.close()


class CountingRedisStore(RedisStore):
    """A real RedisStore that counts how often the fallback actually asks Redis."""

    calls = 0

    async def admit(self, checks: list[QuotaCheck], now: float) -> Admission:
        self.calls += 1
        return await super().admit(checks, now)


async def test_dead_redis_is_probed_once_per_interval(redis_url: str, restart_redis: RedisServer) -> None:
    clock = [1000.0]
    shared = CountingRedisStore(redis_url, timeout=TIMEOUT)
    store = FallbackStore(shared, retry_interval=1.0, clock=lambda: clock[0])
    check = QuotaCheck("svc:probe", 1000, 3600)
    try:
        assert not (await store.admit([check], time.time())).degraded
        restart_redis.stop()
        for _ in range(50):
            assert (await store.admit([check], time.time())).degraded
        assert shared.calls == 2  # the healthy call, then the one that found Redis gone
        clock[0] += 1.0
        for _ in range(50):
            assert (await store.admit([check], time.time())).degraded
        assert shared.calls == 3  # one probe after the interval
        assert store.errors == 100

        restart_redis.start()
        clock[0] += 1.0
        result = await until(lambda: _probe_later(store, check, clock), timeout=5, what="probe success")
        assert not result.degraded and store.available
        calls = shared.calls
        for _ in range(5):
            assert not (await store.admit([check], time.time())).degraded
        assert shared.calls == calls + 5  # healthy again: every call goes to Redis
    finally:
        await store.close()


async def _probe_later(store: FallbackStore, check: QuotaCheck, clock: list[float]) -> Admission | None:
    result = await store.admit([check], time.time())
    if result.degraded:
        clock[0] += 1.0  # let the next attempt be a probe
        return None
    return result


async def test_policy_and_instances_are_validated() -> None:
    store = FallbackStore(RedisStore("redis://127.0.0.1:1/0"))
    with pytest.raises(ValueError):
        store.configure(policy="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.configure(instances=0)
    assert store.policy == "open" and store.instances == 1
    await store.close()


# -- Memory store: bounded -----------------------------------------------------------------------


async def test_memory_counters_stay_bounded() -> None:
    store = MemoryStore()
    checks = [QuotaCheck(f"svc:s{i}", 5, 1) for i in range(20)]
    checks.append(QuotaCheck("app:a", 10**9, 60, scope="app"))
    start = 1_700_000_000.0
    peak = 0
    for step in range(20_000):  # 1000 simulated seconds, 20 calls a second
        now = start + step / 20
        await store.admit([checks[step % 20], checks[-1]], now)
        peak = max(peak, store.sizes()["counters"])
    # At most the current second's 20 counters, the minute counter, and one second of overlap.
    assert peak <= 42
    assert store.sizes()["counters"] <= 22


async def test_memory_nonces_and_locks_stay_bounded() -> None:
    clock = [0.0]
    store = MemoryStore(clock=lambda: clock[0])
    for i in range(10_000):
        clock[0] = i * 0.01  # 100 s in all
        assert await store.first_use(f"nonce:{i}", 5)
        token = await store.acquire(f"lock:{i % 7}", 0.05)
        if token and i % 2:
            await store.release(f"lock:{i % 7}", token)
        await store.set(f"value:{i % 13}", b"x", 1)
    sizes = store.sizes()
    assert sizes["nonces"] <= 501  # 5 s of nonces at 100 a second
    assert sizes["locks"] <= 7 and sizes["values"] <= 13
    assert len(store._nonces._heap) <= 501


async def test_memory_concurrent_admits_are_exact() -> None:
    store = MemoryStore()
    check = QuotaCheck("svc:m", 50, 60)
    now = time.time()
    results = await asyncio.gather(*(store.admit([check], now) for _ in range(200)))
    assert sum(r.admitted for r in results) == 50
