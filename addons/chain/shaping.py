"""Shaping glue (SPEC 14): queued quota entries, the provider's learned quota, their metrics.

How a waiting call learns there is room: quota windows are fixed and aligned, so a full counter
gets room only at its window's edge, which the refusing check names (`window_start + window`).
Each counter with waiters has one timer in this process, set to that edge; when it fires, the
waiters of that counter try for room one by one in fair order (one admission each, in memory or one
Redis script each) until one is refused, and the timer is set to the next edge. With Redis every
instance does the same at the same edge, so the fleet costs one refused script per instance per
window at most: no polling and no storm. A caller that disconnects is dropped from its queue by
mitmproxy's `client_disconnected` hook at once.

The provider's quota (`blocked until T`, addons/shaping/provider.py) is kept in this process; with
Redis it is also published to the fleet (addons/shaping/fleet.py: a key with a TTL ending at T and a
pub/sub message), so a call checks it in memory and costs no extra Redis round trip.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mitmproxy import connection, ctx, http
from prometheus_client import Gauge, Histogram

from addons.chain.context import GatewayContext, fail, fail_closed
from addons.errors import Code, GatewayError
from addons.quota.policy import quota_checks
from addons.shaping.fair import FairQueue
from addons.shaping.provider import MAX_BLOCK, ProviderQuotas, observe
from addons.shaping.schema import DEFAULT_QUEUE_MAX
from addons.state.base import Admission, QuotaCheck, StateUnavailable

if TYPE_CHECKING:
    from addons.runtime import Compiled, ServiceRuntime
    from addons.shaping.fleet import FleetBlocks  # imported only with gateway_redis set (redis-py)
    from addons.upstream.forwarder import Result

log = logging.getLogger("gateway")

WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# Woken this long after a window's edge, so the clock surely reads the new window.
EDGE_SLACK = 0.002

Decide = Callable[[http.HTTPFlow, list[QuotaCheck], Admission, float], None]
GroupKey = tuple[str, int, int]


def _group_key(check: QuotaCheck) -> GroupKey:
    return (check.key, check.window, check.offset)


@dataclass(eq=False)
class Waiter:
    app: str
    service: str
    checks: list[QuotaCheck]
    waits: tuple[float, ...]  # per check: how long this call may wait for it (0: not queued)
    client: connection.Client | None
    future: asyncio.Future[Admission]
    group: _Group | None = None  # the queue it is in (None: waiting for a provider reset, or done)
    refused: QuotaCheck | None = None  # the counter it waits for
    left: bool = False


@dataclass(eq=False)
class _Group:
    """The waiters of one quota counter and the timer set to its next window edge."""

    key: GroupKey
    queue: FairQueue[Waiter] = field(default_factory=FairQueue)
    timer: asyncio.TimerHandle | None = None
    draining: bool = False


class Shaping:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        gw.shaping = self
        self.provider = ProviderQuotas()
        self._groups: dict[GroupKey, _Group] = {}
        self._by_client: dict[connection.Client, set[Waiter]] = {}
        self._depth: dict[str, int] = {}
        self._waiting = 0
        self._waits_for: tuple[Compiled | None, dict[tuple[str | None, str], tuple[float, ...] | None]] = (None, {})
        self._tasks: set[asyncio.Task[Any]] = set()
        self.fleet: FleetBlocks | None = None
        registry = gw.metrics.registry
        self.wait_seconds = Histogram("gateway_queue_wait_seconds",
                                      "Time calls waited for room (a queue or the provider's reset).", ["service"],
                                      buckets=WAIT_BUCKETS, registry=registry)
        self.depth_gauge = Gauge("gateway_queue_depth", "Calls waiting for room now, in this process.",
                                 ["service"], registry=registry)
        self.remaining_gauge = Gauge("gateway_provider_quota_remaining",
                                     "Calls the provider last said it still allows.", ["service"], registry=registry)
        gw.on_rules_changed.append(self._rules_changed)

    # -- mitmproxy hooks ------------------------------------------------------------------------

    @fail_closed
    def client_disconnected(self, client: connection.Client) -> None:
        for waiter in self._by_client.pop(client, ()):
            if not waiter.future.done():
                waiter.future.cancel()
            self._leave(waiter)

    def configure(self, updated: set[str]) -> None:
        if "gateway_redis" not in updated:
            return
        url = str(getattr(ctx.options, "gateway_redis", "") or "").strip()
        if self.fleet is not None:
            self._spawn(self.fleet.close())
            self.fleet = None
        if url:
            from addons.shaping.fleet import FleetBlocks

            try:
                self.fleet = FleetBlocks(url, self._heard_block, self._service_names)
            except ValueError:
                return  # a bad URL: the State addon refuses the option with a clear message
            self.running()

    def running(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # configured before the loop runs: started by mitmproxy's running hook
        if self.fleet is not None:
            self.fleet.start()

    def done(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        for group in self._groups.values():
            if group.timer is not None:
                group.timer.cancel()

    def _spawn(self, coro: Any) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            return
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _service_names(self) -> list[str]:
        compiled = self.gw.compiled
        return list(compiled.services) if compiled is not None else []

    def _heard_block(self, service: str, until: float) -> None:
        """Another instance learned that `service`'s provider quota is spent until `until`."""
        compiled = self.gw.compiled
        now = time.time()
        if compiled is None or service not in compiled.services or until <= now:
            return
        self.provider.block(service, min(until, now + MAX_BLOCK), now)
        self.remaining_gauge.labels(service).set(0)

    # -- configuration --------------------------------------------------------------------------

    def _rules_changed(self, compiled: Compiled) -> None:
        self._waits_for = (compiled, {})
        self.provider.retain(set(compiled.services))

    def queue_max(self) -> int:
        compiled = self.gw.compiled
        value = getattr(compiled.gateway, "queue_max", None) if compiled is not None else None
        return DEFAULT_QUEUE_MAX if value is None else int(value)

    def _waits(self, app: str | None, route: Any, checks: list[QuotaCheck]) -> tuple[float, ...] | None:
        """Per check of this call, how long it may wait for that check's room; None: nothing queues.

        Computed once per (app, rule) and rule set: each queued entry alone gives its counter."""
        compiled = self.gw.compiled
        if self._waits_for[0] is not compiled:
            self._waits_for = (compiled, {})
        cache = self._waits_for[1]
        key = (app, route.name)
        if key in cache:
            return cache[key]
        waits: tuple[float, ...] | None = None
        if compiled is not None and checks:
            app_spec = compiled.rules.apps.get(app) if app else None
            spec = route.spec
            lists: list[tuple[list[Any], list[Any], list[Any]]] = []
            for entry in (app_spec.quota if app_spec else []):
                if getattr(entry, "queue", None):
                    lists.append(([entry], [], []))
            for entry in (spec.quota if spec else []):
                if entry.queue:
                    lists.append(([], [entry], []))
            for entry in (route.method_spec.quota if route.method_spec else []):
                if entry.queue:
                    lists.append(([], [], [entry]))
            found: dict[GroupKey, float] = {}
            for aq, sq, mq in lists:
                entry = (aq or sq or mq)[0]
                for check in quota_checks(app, aq, route.service, sq, route.method, mq):
                    found[_group_key(check)] = max(found.get(_group_key(check), 0.0), float(entry.queue))
            if found:
                waits = tuple(found.get(_group_key(c), 0.0) for c in checks)
        cache[key] = waits
        return waits

    # -- the quota step -------------------------------------------------------------------------

    def intercept(self, flow: http.HTTPFlow, checks: list[QuotaCheck], now: float,
                  decide: Decide, provider: bool = True) -> Awaitable[None] | None:
        """None: plain admission goes on as before. Else the awaitable decides the call itself.
        `provider` False: the call will not reach the provider (a cache hit), so its learned quota
        does not apply."""
        call = self.gw.call(flow)
        route = call.route
        store = self.gw.store
        if route is None or store is None:
            return None
        waits = self._waits(call.app, route, checks) if checks else None
        if waits is None and (not provider or self.provider.blocked_until(route.service, now) is None):
            return None
        return self._shaped(flow, checks, waits, now, decide, provider)

    async def _shaped(self, flow: http.HTTPFlow, checks: list[QuotaCheck], waits: tuple[float, ...] | None,
                      now: float, decide: Decide, provider: bool = True) -> None:
        call = self.gw.call(flow)
        assert call.route is not None and self.gw.compiled is not None and self.gw.store is not None
        service = call.route.service
        runtime = self.gw.compiled.services.get(service)
        deadline = runtime.policy(call.route.method).deadline if runtime is not None else math.inf
        # A call never waits past its retry deadline, nor longer than its longest queued entry.
        budget = min(max(waits) if waits else 0.0, deadline)
        started = time.monotonic()

        until = self.provider.blocked_until(service, now) if provider else None
        if until is not None:
            if until - now > budget or not self._room_in_queue():
                self._provider_refuse(flow, service, until, now)
                return
            if not await self._sleep_until(flow, service, until):
                return
            now = time.time()
        if not checks:
            self._observe_wait(service, started)
            return

        group_first = self._waiting_group(checks, waits)
        if group_first is None:
            try:
                admission = await self.gw.store.admit(checks, now)
            except StateUnavailable as exc:
                self._state_failed(flow, exc)
                return
            if admission.admitted:
                self._observe_wait(service, started)
                decide(flow, checks, admission, now)
                return
            refused = admission.refused
        else:
            # Others already wait for this counter: queue behind them instead of taking the room first.
            refused = group_first
            admission = Admission(False, refused)
        index = checks.index(refused) if refused is not None and refused in checks else -1
        wait = min(waits[index], budget) if waits is not None and index >= 0 else 0.0
        left = wait - (time.monotonic() - started)
        if refused is None or left <= 0 or refused.window_start(now) + refused.window - now > left:
            decide(flow, checks, admission, now)  # no room within the wait: the plain 429
            return
        if not self._room_in_queue():
            self.gw.metrics.quota_rejected(call.app, service, refused.scope)
            fail(flow, call, GatewayError(Code.CALLER_QUOTA,
                                          f"quota exceeded and the queue is full ({self.queue_max()} calls waiting)",
                                          headers={"Retry-After": str(refused.reset_after(now))}), call.rule)
            return
        result = await self._queue(flow, service, checks, waits or (), refused, left)
        if result is None:  # gone: the caller disconnected or the state store failed (answered)
            return
        self._observe_wait(service, started)
        decide(flow, checks, result, time.time())

    # -- waiting --------------------------------------------------------------------------------

    def _room_in_queue(self) -> bool:
        return self._waiting < self.queue_max()

    def _waiting_group(self, checks: list[QuotaCheck], waits: tuple[float, ...] | None) -> QuotaCheck | None:
        if waits is None or not self._groups:
            return None
        for check, wait in zip(checks, waits, strict=True):
            group = self._groups.get(_group_key(check))
            if wait and group is not None and group.queue:
                return check
        return None

    def _enter(self, waiter: Waiter) -> None:
        self._waiting += 1
        self._depth[waiter.service] = self._depth.get(waiter.service, 0) + 1
        self.depth_gauge.labels(waiter.service).set(self._depth[waiter.service])
        if waiter.client is not None:
            self._by_client.setdefault(waiter.client, set()).add(waiter)

    def _leave(self, waiter: Waiter) -> None:
        """Idempotent: out of its queue, its client's set and the depth count."""
        if waiter.group is not None:
            group = waiter.group
            waiter.group = None
            group.queue.remove(waiter.app, waiter)
            if not group.queue and not group.draining:
                self._drop_group(group)
        if waiter.left:
            return
        waiter.left = True
        self._waiting -= 1
        self._depth[waiter.service] = max(0, self._depth.get(waiter.service, 1) - 1)
        self.depth_gauge.labels(waiter.service).set(self._depth[waiter.service])
        if waiter.client is not None:
            mine = self._by_client.get(waiter.client)
            if mine is not None:
                mine.discard(waiter)
                if not mine:
                    self._by_client.pop(waiter.client, None)

    def _drop_group(self, group: _Group) -> None:
        if group.timer is not None:
            group.timer.cancel()
            group.timer = None
        if self._groups.get(group.key) is group:
            del self._groups[group.key]

    async def _queue(self, flow: http.HTTPFlow, service: str, checks: list[QuotaCheck], waits: tuple[float, ...],
                     refused: QuotaCheck, left: float) -> Admission | None:
        call = self.gw.call(flow)
        future: asyncio.Future[Admission] = asyncio.get_running_loop().create_future()
        waiter = Waiter(call.app or "_", service, checks, waits, flow.client_conn, future)
        self._enter(waiter)
        self._join(waiter, refused)
        try:
            return await asyncio.wait_for(future, left)
        except TimeoutError:
            return Admission(False, waiter.refused or refused)
        except asyncio.CancelledError:
            if future.cancelled() and not _task_cancelling():
                self._gone(flow)
                return None
            raise
        except StateUnavailable as exc:
            self._state_failed(flow, exc)
            return None
        finally:
            self._leave(waiter)

    def _join(self, waiter: Waiter, check: QuotaCheck) -> None:
        key = _group_key(check)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(key)
        waiter.group = group
        waiter.refused = check
        group.queue.push(waiter.app, waiter)
        if group.timer is None and not group.draining:
            self._arm(group, check)

    def _arm(self, group: _Group, check: QuotaCheck) -> None:
        now = time.time()
        delay = check.window_start(now) + check.window - now + EDGE_SLACK
        loop = asyncio.get_running_loop()
        group.timer = loop.call_later(max(0.0, delay), self._fire, group, check)

    def _fire(self, group: _Group, check: QuotaCheck) -> None:
        group.timer = None
        group.draining = True
        task = asyncio.get_running_loop().create_task(self._drain(group, check))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, group: _Group, check: QuotaCheck) -> None:
        """At a window edge: admit the group's waiters in fair order until the counter is full."""
        store = self.gw.store
        rearm: QuotaCheck | None = None
        try:
            while group.queue and store is not None:
                waiter = group.queue.head()
                assert waiter is not None
                if waiter.future.done():
                    group.queue.pop()
                    waiter.group = None
                    continue
                now = time.time()
                try:
                    admission = await store.admit(waiter.checks, now)
                except StateUnavailable as exc:
                    group.queue.pop()
                    waiter.group = None
                    if not waiter.future.done():
                        waiter.future.set_exception(exc)
                    continue
                if waiter.future.done() or waiter.group is not group:
                    continue  # it left while the store answered (a disconnect, its timeout)
                if admission.admitted:
                    group.queue.pop()
                    waiter.group = None
                    waiter.future.set_result(admission)
                    continue
                refused = admission.refused
                if refused is not None and _group_key(refused) == group.key:
                    rearm = refused
                    break
                group.queue.pop()
                waiter.group = None
                index = waiter.checks.index(refused) if refused in waiter.checks else -1
                if refused is not None and index >= 0 and waiter.waits and waiter.waits[index]:
                    self._join(waiter, refused)  # now waits for the other counter's room
                else:
                    waiter.future.set_result(admission)
        finally:
            group.draining = False
            if group.queue:
                self._arm(group, rearm or check)
            else:
                self._drop_group(group)

    async def _sleep_until(self, flow: http.HTTPFlow, service: str, until: float) -> bool:
        """Wait for the provider's reset; False when the caller left meanwhile (the call is over)."""
        call = self.gw.call(flow)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Admission] = loop.create_future()
        waiter = Waiter(call.app or "_", service, [], (), flow.client_conn, future)
        self._enter(waiter)
        def wake() -> None:
            if not future.done():
                future.set_result(Admission(True))

        timer = loop.call_later(max(0.0, until - time.time()) + EDGE_SLACK, wake)
        try:
            await future
            return True
        except asyncio.CancelledError:
            if future.cancelled() and not _task_cancelling():
                self._gone(flow)
                return False
            raise
        finally:
            timer.cancel()
            self._leave(waiter)

    def _gone(self, flow: http.HTTPFlow) -> None:
        call = self.gw.call(flow)
        call.error = "caller disconnected while waiting for room"
        # Nobody reads this answer; it ends the pipeline (nothing goes upstream) and the log says why.
        fail(flow, call, GatewayError(Code.CALLER_QUOTA, "caller left the queue"), call.rule)

    def _state_failed(self, flow: http.HTTPFlow, exc: StateUnavailable) -> None:
        call = self.gw.call(flow)
        call.error = f"state store unavailable: {exc}"
        fail(flow, call, GatewayError(Code.GATEWAY_INTERNAL, "quota state unavailable (state_failure: closed)"),
             call.rule)

    def _observe_wait(self, service: str, started: float) -> None:
        waited = time.monotonic() - started
        if waited > 0.001:
            self.wait_seconds.labels(service).observe(waited)

    # -- the provider's quota -------------------------------------------------------------------

    def _provider_refuse(self, flow: http.HTTPFlow, service: str, until: float, now: float) -> None:
        call = self.gw.call(flow)
        seconds = max(1, math.ceil(until - now))
        error = GatewayError(Code.UPSTREAM_RATE_LIMITED,
                             f"{service}: the provider's quota is spent; it resets in {seconds}s",
                             headers={"Retry-After": str(seconds)})
        call.error = "provider quota spent (learned); not sent"
        fail(flow, call, error, call.rule)

    def learn(self, runtime: ServiceRuntime, result: Result) -> Awaitable[None] | None:
        """Read one provider answer for what it says about the provider's quota. Returns an awaitable
        (telling the fleet, one Redis round trip) only when the answer newly spends the quota."""
        if result.status is None:
            return None
        spec = runtime.spec.provider_quota
        verdict = result.verdict
        now = time.time()
        seen = observe(result.status, result.headers, now,
                       remaining_header=spec.remaining if spec is not None else None,
                       reset_header=spec.reset if spec is not None else None,
                       provider_code=verdict.provider_code if verdict is not None else None,
                       wechat=getattr(runtime.adapter, "name", None) == "wechat" or _kind(runtime) == "wechat")
        if seen is None:
            return None
        service = runtime.name
        before = self.provider.blocked_until(service, now)
        state = self.provider.learn(service, seen, now)
        if state.remaining is not None:
            self.remaining_gauge.labels(service).set(state.remaining)
        if seen.blocked_until is not None and (before is None or seen.blocked_until > before):
            log.info("gateway: %s: the provider's quota is spent for %.1fs", service, seen.blocked_until - now)
            if self.fleet is not None:
                return self.fleet.publish(service, seen.blocked_until, now)
        return None

    # -- operations -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.time()
        return {
            "queue": {
                "waiting": self._waiting,
                "max": self.queue_max(),
                "by_service": {name: depth for name, depth in sorted(self._depth.items()) if depth},
            },
            "provider_quota": self.provider.status(now),
            "fleet_channel": None if self.fleet is None else ("subscribed" if self.fleet.subscribed else "connecting"),
        }


def _task_cancelling() -> bool:
    """True when our own task is being cancelled (a shutdown), not only the future we waited on."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _kind(runtime: ServiceRuntime) -> str:
    envelope = runtime.spec.envelope
    return envelope if isinstance(envelope, str) else envelope.type
