"""Target health (SPEC 3 `health`, SPEC 9): passive marking, picking a target, probes against real
local servers, and clean stops."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from addons.rules.schema import HealthSpec, UpstreamSpec
from addons.upstream.health import (
    HealthProber,
    HealthRegistry,
    ServiceHealth,
    TargetHealth,
    half_open_cooldown,
)
from tests.conftest import free_port, until

WAIT = 5.0  # upper bound for any condition below; they normally hold within a few probe intervals


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Changes:
    """Records on_change calls and lets a test wait for a given transition."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []
        self._changed = asyncio.Event()

    def __call__(self, service: ServiceHealth, target: TargetHealth, up: bool) -> None:
        self.calls.append((service.service, target.name, up))
        self._changed.set()

    async def wait_for(self, target: str, up: bool, count: int = 1) -> None:
        def seen() -> bool:
            return sum(1 for _, t, u in self.calls if t == target and u is up) >= count

        try:
            async with asyncio.timeout(WAIT):
                while not seen():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {WAIT}s waiting for {target} up={up}") from None


def spec(**overrides: Any) -> HealthSpec:
    values: dict[str, Any] = {"path": "/health", "interval": "50ms", "timeout": "1s",
                              "unhealthy_after": 3, "healthy_after": 2}
    return HealthSpec.model_validate({**values, **overrides})


# -- passive marking and picking (no network) ------------------------------------------------------


def test_passive_down_after_consecutive_failures() -> None:
    changes = Changes()
    h = ServiceHealth("http://a", "http://b", spec(unhealthy_after=3), service="wechat", on_change=changes)
    p = h.primary
    p.record_failure("503")
    p.record_failure("503")
    assert p.up
    p.record_success()  # breaks the run
    p.record_failure("503")
    p.record_failure("503")
    assert p.up and p.failures == 2
    p.record_failure("connect refused")
    assert not p.up
    assert p.last_error == "connect refused"
    assert changes.calls == [("wechat", "primary", False)]


def test_backup_picked_while_primary_down_and_none_when_both_down() -> None:
    h = ServiceHealth("http://a", "http://b", spec(unhealthy_after=1))
    assert h.pick() is h.primary
    h.primary.record_failure("x")
    assert h.pick() is h.backup
    assert h.backup is not None
    h.backup.record_failure("x")
    assert h.pick() is None
    assert not h.any_up


def test_no_backup_and_primary_down_is_none() -> None:
    h = ServiceHealth("http://a", None, spec(unhealthy_after=2))
    h.primary.record_failure()
    assert h.pick() is h.primary
    h.primary.record_failure()
    assert h.pick() is None
    assert h.other(h.primary) is None


def test_other_for_failover_within_a_call() -> None:
    h = ServiceHealth("http://a", "http://b", spec(unhealthy_after=1))
    assert h.other(h.primary) is h.backup
    assert h.backup is not None
    assert h.other(h.backup) is h.primary
    h.backup.record_failure()
    assert h.other(h.primary) is None


def test_probed_target_comes_back_only_through_probes() -> None:
    changes = Changes()
    h = ServiceHealth("http://a", None, spec(unhealthy_after=2, healthy_after=2), on_change=changes)
    t = h.primary
    t.record_probe(False, "probe answered HTTP 500")
    t.record_failure("live 503")  # probe and live failures count together
    assert not t.up
    t.record_success()  # a call in flight when it went down: no evidence
    assert not t.up
    t.record_probe(True)
    t.record_probe(False, "HTTP 500")  # a failure resets the run of successes
    t.record_probe(True)
    assert not t.up
    t.record_probe(True)
    assert t.up
    assert [u for _, _, u in changes.calls] == [False, True]


def test_unprobed_target_half_opens_after_cooldown() -> None:
    clock = FakeClock()
    h = ServiceHealth("http://a", "http://b", None, cooldown=5.0, clock=clock)
    for _ in range(3):  # the schema default unhealthy_after
        h.primary.record_failure("503")
    assert not h.primary.up
    assert h.pick() is h.backup
    clock.now += 4.9
    assert h.pick() is h.backup
    assert h.primary.state == "down"
    clock.now += 0.2
    assert h.primary.state == "half-open"
    assert h.pick() is h.primary  # one trial call
    assert h.pick() is h.backup  # the rest keep going to the backup during the trial
    h.primary.record_failure("still 503")  # trial failed: another cool-down
    clock.now += 4.0
    assert h.pick() is h.backup
    clock.now += 1.5
    assert h.pick() is h.primary
    h.primary.record_success()
    assert h.primary.up
    assert h.pick() is h.primary


def test_unprobed_single_target_gives_none_then_a_trial() -> None:
    clock = FakeClock()
    h = ServiceHealth("http://a", None, None, cooldown=5.0, clock=clock)
    for _ in range(3):
        h.primary.record_failure()
    assert h.pick() is None  # fallback at once during the cool-down
    clock.now += 5.0
    assert h.pick() is h.primary
    assert h.pick() is None


def test_from_spec_and_cooldown() -> None:
    up = UpstreamSpec(url="https://api.example.test", backup="https://api2.example.test", timeout=12.0)
    h = ServiceHealth.from_spec("wechat", up, None)
    assert h.cooldown == 12.0 and h.primary.cooldown == 12.0
    assert h.backup is not None and h.backup.url == "https://api2.example.test"
    assert half_open_cooldown(1.0) == 5.0
    short = UpstreamSpec(url="https://api.example.test", timeout=0.5)
    assert ServiceHealth.from_spec("x", short, spec()).cooldown == 5.0


def test_key_changes_with_url_backup_and_health_spec() -> None:
    base = ServiceHealth("http://a", "http://b", spec())
    assert base.key == ServiceHealth("http://a", "http://b", spec()).key
    assert base.key != ServiceHealth("http://a2", "http://b", spec()).key
    assert base.key != ServiceHealth("http://a", None, spec()).key
    assert base.key != ServiceHealth("http://a", "http://b", spec(interval="1s")).key
    assert base.key != ServiceHealth("http://a", "http://b", spec(unhealthy_after=5)).key
    assert base.key != ServiceHealth("http://a", "http://b", None).key
    # The cool-down only matters without probes.
    assert base.key == ServiceHealth("http://a", "http://b", spec(), cooldown=30.0).key
    assert ServiceHealth("http://a", None, None, cooldown=5.0).key != \
        ServiceHealth("http://a", None, None, cooldown=30.0).key


def test_status_is_json_ready() -> None:
    h = ServiceHealth("http://a", "http://b", spec(unhealthy_after=1), service="amap")
    h.primary.record_failure("probe answered HTTP 500")
    status = h.status()
    json.dumps(status)
    assert status["service"] == "amap"
    primary, backup = status["targets"]
    assert primary["target"] == "primary" and primary["up"] is False and primary["state"] == "down"
    assert primary["last_error"] == "probe answered HTTP 500"
    assert primary["changed_at"].endswith("Z")
    assert backup["up"] is True and backup["last_error"] is None


def test_callback_errors_do_not_reach_the_reporter() -> None:
    def broken(service: ServiceHealth, target: TargetHealth, up: bool) -> None:
        raise RuntimeError("metrics exploded")

    h = ServiceHealth("http://a", None, spec(unhealthy_after=1), on_change=broken)
    h.primary.record_failure()  # must not raise
    assert not h.primary.up


# -- probes against real local servers -------------------------------------------------------------


class FlipServer:
    """A local upstream whose /health answers `status`; `hang` makes it wait until released."""

    def __init__(self) -> None:
        self.status = 200
        self.hits = 0
        self.hang = False
        self.release = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _health(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.hang:
            await self.release.wait()
        if 300 <= self.status < 400:
            raise web.HTTPFound("/broken")  # a redirect to a failing page: still healthy
        return web.Response(status=self.status, text="ok" if self.status < 400 else "down")

    async def _broken(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=500)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/broken", self._broken)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def servers() -> AsyncIterator[tuple[FlipServer, FlipServer]]:
    a, b = FlipServer(), FlipServer()
    await a.start()
    await b.start()
    yield a, b
    await a.close()
    await b.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    s = aiohttp.ClientSession(trust_env=False)
    yield s
    await s.close()


def collect_loop_errors(errors: list[dict[str, Any]]) -> None:
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))


async def test_probe_thresholds_exact(servers: tuple[FlipServer, FlipServer],
                                      session: aiohttp.ClientSession) -> None:
    a, b = servers
    changes = Changes()
    h = ServiceHealth(a.url, b.url, spec(unhealthy_after=2, healthy_after=3), service="svc")
    prober = HealthProber(h, session, on_change=changes)
    await prober.probe_once()
    assert h.primary.up and h.primary.last_probe_at is not None
    a.status = 500
    await prober.probe_once()
    assert h.primary.up and h.primary.failures == 1
    await prober.probe_once()
    assert not h.primary.up
    assert h.primary.last_error == "probe answered HTTP 500"
    assert h.pick() is h.backup
    a.status = 200
    for _ in range(2):
        await prober.probe_once()
        assert not h.primary.up
    await prober.probe_once()
    assert h.primary.up
    assert h.pick() is h.primary
    assert changes.calls == [("svc", "primary", False), ("svc", "primary", True)]
    assert a.hits == 6 and b.hits == 6


async def test_prober_task_flips_target_down_and_up(servers: tuple[FlipServer, FlipServer],
                                                    session: aiohttp.ClientSession) -> None:
    a, b = servers
    changes = Changes()
    h = ServiceHealth(a.url, b.url, spec(interval="50ms", unhealthy_after=3, healthy_after=2), service="svc")
    prober = HealthProber(h, session, on_change=changes)
    prober.start()
    try:
        await until(lambda: a.hits >= 2 and b.hits >= 2, WAIT, "the first probe rounds")
        assert h.primary.up

        a.status = 500
        flipped_at = a.hits
        await changes.wait_for("primary", up=False)
        # At least unhealthy_after answers were 500s (each one a hit after the flip).
        assert a.hits - flipped_at >= 3
        assert h.pick() is h.backup

        a.status = 200
        recovered_from = a.hits
        await changes.wait_for("primary", up=True)
        assert a.hits - recovered_from >= 2
        assert h.pick() is h.primary

        b.status = 503
        a.status = 503
        await changes.wait_for("backup", up=False)
        await changes.wait_for("primary", up=False, count=2)
        assert h.pick() is None
    finally:
        await prober.stop()
    assert not prober.running


async def test_refused_connect_counts_as_failure(session: aiohttp.ClientSession) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    h = ServiceHealth(dead, None, spec(unhealthy_after=2))
    prober = HealthProber(h, session)
    await prober.probe_once()
    await prober.probe_once()
    assert not h.primary.up
    assert h.primary.last_error is not None and "probe failed" in h.primary.last_error


async def test_probe_timeout_counts_as_failure(servers: tuple[FlipServer, FlipServer],
                                               session: aiohttp.ClientSession) -> None:
    a, _ = servers
    a.hang = True
    h = ServiceHealth(a.url, None, spec(timeout="100ms", unhealthy_after=1))
    prober = HealthProber(h, session)
    async with asyncio.timeout(WAIT):
        await prober.probe_once()
    assert not h.primary.up
    assert h.primary.last_error == "probe timed out after 0.1s"


async def test_redirect_is_healthy(servers: tuple[FlipServer, FlipServer],
                                   session: aiohttp.ClientSession) -> None:
    a, _ = servers
    a.status = 302
    h = ServiceHealth(a.url, None, spec(unhealthy_after=1))
    await HealthProber(h, session).probe_once()
    assert h.primary.up and h.primary.last_error is None


async def test_prober_survives_a_failing_callback(servers: tuple[FlipServer, FlipServer],
                                                  session: aiohttp.ClientSession) -> None:
    a, b = servers
    calls: list[bool] = []

    def broken(service: ServiceHealth, target: TargetHealth, up: bool) -> None:
        calls.append(up)
        raise RuntimeError("metrics exploded")

    a.status = 500
    h = ServiceHealth(a.url, b.url, spec(interval="50ms", unhealthy_after=1, healthy_after=1))
    prober = HealthProber(h, session, on_change=broken)
    prober.start()
    try:
        await until(lambda: calls == [False], WAIT, "the down transition")
        a.status = 200
        await until(lambda: calls == [False, True], WAIT, "the up transition after a failing callback")
        assert prober.running
    finally:
        await prober.stop()


async def test_stop_cancels_an_inflight_probe_cleanly(servers: tuple[FlipServer, FlipServer],
                                                      session: aiohttp.ClientSession) -> None:
    errors: list[dict[str, Any]] = []
    collect_loop_errors(errors)
    a, _ = servers
    a.hang = True  # the probe will sit in the request until cancelled
    h = ServiceHealth(a.url, None, spec(timeout="30s"))
    prober = HealthProber(h, session)
    prober.start()
    task = prober._task
    assert task is not None
    await until(lambda: a.hits >= 1, WAIT, "the probe to reach the server")
    async with asyncio.timeout(2.0):  # far below the probe's own 30 s timeout
        await prober.stop()
    assert task.done() and task.cancelled()
    assert not prober.running
    assert h.primary.up and h.primary.failures == 0  # a cancelled probe is no verdict
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("health-probe")]
    await prober.stop()  # idempotent
    gc.collect()
    await asyncio.sleep(0)
    assert errors == []


async def test_cancel_from_sync_code_then_await(servers: tuple[FlipServer, FlipServer],
                                                session: aiohttp.ClientSession) -> None:
    a, _ = servers
    h = ServiceHealth(a.url, None, spec(interval="50ms"))
    prober = HealthProber(h, session)
    prober.start()
    prober.start()  # idempotent: still one task
    assert len([t for t in asyncio.all_tasks() if t.get_name().startswith("health-probe")]) == 1
    await until(lambda: a.hits >= 1, WAIT, "a probe")
    task = prober.cancel()
    assert task is not None
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT):
            await task
    assert not prober.running


def test_prober_needs_a_health_block() -> None:
    with pytest.raises(ValueError, match="no health block"):
        HealthProber(ServiceHealth("http://a", None, None), session=None)  # type: ignore[arg-type]


# -- reload ----------------------------------------------------------------------------------------


def probe_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("health-probe") and not t.done()]


async def test_registry_keeps_unchanged_services_across_reload(
        servers: tuple[FlipServer, FlipServer], session: aiohttp.ClientSession) -> None:
    errors: list[dict[str, Any]] = []
    collect_loop_errors(errors)
    a, b = servers
    changes = Changes()
    registry = HealthRegistry(session, on_change=changes)

    def build(interval: str = "50ms") -> dict[str, ServiceHealth]:
        return {
            "wechat": ServiceHealth(a.url, b.url, spec(interval=interval, unhealthy_after=1),
                                    service="wechat"),
            "amap": ServiceHealth(b.url, None, None, service="amap"),  # no probes
        }

    first = registry.apply(build())
    assert len(probe_tasks()) == 1
    a.status = 500
    await changes.wait_for("primary", up=False)
    a.status = 200

    # Same specs: the very same objects, state and prober survive.
    second = registry.apply(build())
    assert second["wechat"] is first["wechat"] and second["amap"] is first["amap"]
    assert len(probe_tasks()) == 1

    # A changed health block: fresh state (up), the old prober retired, a new one running.
    old_task = registry._probers["wechat"]._task
    third = registry.apply(build(interval="60ms"))
    assert third["wechat"] is not first["wechat"] and third["wechat"].primary.up
    assert third["amap"] is first["amap"]
    assert third["wechat"].on_change is changes
    await until(lambda: old_task is not None and old_task.done(), WAIT, "the retired prober to end")
    assert len(probe_tasks()) == 1
    json.dumps(registry.status())

    # A removed service: its prober stops.
    registry.apply({"amap": third["amap"]})
    await until(lambda: not probe_tasks(), WAIT, "no probers left")
    assert registry.get("wechat") is None

    registry.apply(build())
    assert len(probe_tasks()) == 1
    await registry.aclose()
    assert not probe_tasks()
    gc.collect()
    await asyncio.sleep(0)
    assert errors == []


def test_registry_apply_without_a_loop_defers_probes() -> None:
    registry = HealthRegistry(session=None)  # type: ignore[arg-type]
    services = registry.apply({"wechat": ServiceHealth("http://a", None, spec(), service="wechat")})
    assert services["wechat"] is registry.get("wechat")
    assert not registry._probers["wechat"].running  # started later by registry.start()
