"""Health of a service's upstream targets (SPEC 3 `health`, SPEC 9): passive marking from live
attempts, active probes, and the choice of target for each call.

One `ServiceHealth` per service holds a `TargetHealth` for `url` ("primary") and, when configured,
`backup`. Live attempts report into it (`record_success` / `record_failure`), a `HealthProber` task
reports probe results into the same counters, and the forwarder asks it where to send a call
(`pick`) and where to fail over to within a call's retries (`other`).

Two modes, chosen by whether the service has a `health` block:

* probed (`health` configured): `unhealthy_after` consecutive failures, live or probe, mark a
  target down; only `healthy_after` consecutive probe successes bring it back. No live traffic is
  sent to a down target.
* unprobed (no `health` block): live failures still mark a target down after `unhealthy_after`
  (the schema default, 3), but nothing would ever bring it back, so it goes half-open after a
  cool-down of `max(5 s, upstream timeout)`: `pick` lets one trial call through per cool-down; a
  success brings the target up, a failure starts a new cool-down. The cool-down is at least one
  attempt's timeout so that trials of a slow provider do not overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import aiohttp

from addons.timestamps import rfc3339
from addons.upstream.schema import HealthSpec, UpstreamSpec

log = logging.getLogger(__name__)

TargetName = Literal["primary", "backup"]
ChangeCallback = Callable[["ServiceHealth", "TargetHealth", bool], None]

MIN_COOLDOWN = 5.0
# A zero `interval` is accepted by the schema; probing in a tight loop would only load the provider.
MIN_PROBE_INTERVAL = 0.01


def half_open_cooldown(timeout: float) -> float:
    """Cool-down of an unprobed target that was marked down (see the module docstring)."""
    return max(MIN_COOLDOWN, timeout)


class TargetHealth:
    """One target's state. Not thread-safe: used from the proxy's event loop only."""

    def __init__(self, name: TargetName, url: str, unhealthy_after: int = 3, healthy_after: int = 2, *,
                 probed: bool = False, cooldown: float = MIN_COOLDOWN,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 listener: Callable[[TargetHealth, bool], None] | None = None) -> None:
        self.name: TargetName = name
        self.url = url
        self.unhealthy_after = unhealthy_after
        self.healthy_after = healthy_after
        self.probed = probed
        self.cooldown = cooldown
        self._clock = clock
        self._wall = wall
        self.listener = listener
        self.up = True  # a new target is trusted until it fails: the gateway must serve at start
        self.failures = 0  # consecutive failed attempts or probes
        self.successes = 0  # consecutive successful probes while down
        self.changed_at = wall()
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_probe_at: float | None = None
        self._trial_at = 0.0  # monotonic time from which an unprobed down target takes a trial call

    # -- routing ----------------------------------------------------------------------------------

    def available(self) -> bool:
        """May a call go here now? Up, or (unprobed) down with its cool-down over. No side effect."""
        if self.up:
            return True
        return not self.probed and self._clock() >= self._trial_at

    def admit(self) -> bool:
        """`available`, and when this is a half-open trial, use it up: the next trial waits another
        cool-down, so a recovering provider gets one call, not the whole backlog."""
        if self.up:
            return True
        if not self.probed and self._clock() >= self._trial_at:
            self._trial_at = self._clock() + self.cooldown
            return True
        return False

    # -- reports ----------------------------------------------------------------------------------

    def record_success(self) -> None:
        """A live attempt got a usable answer (not a `retry.on` failure)."""
        self.failures = 0
        if not self.up and not self.probed:
            self._set(True)  # a half-open trial went through
        # Probed and down: a call that was already in flight when the target went down finished
        # well. One such answer is no evidence; the probes decide when it comes back.

    def record_failure(self, error: str = "") -> None:
        """A live attempt failed (`RetryPolicy.is_failure`)."""
        self._failed(error)

    def record_probe(self, ok: bool, error: str = "") -> None:
        """A probe's result. A failed probe counts toward `unhealthy_after` like a live failure."""
        self.last_probe_at = self._wall()
        if not ok:
            self._failed(error)
            return
        self.failures = 0
        if not self.up:
            self.successes += 1
            if self.successes >= self.healthy_after:
                self._set(True)

    def _failed(self, error: str) -> None:
        self.failures += 1
        self.successes = 0
        self.last_error = error or "failed"
        self.last_error_at = self._wall()
        if self.up:
            if self.failures >= self.unhealthy_after:
                self._trial_at = self._clock() + self.cooldown
                self._set(False)
        elif not self.probed:
            self._trial_at = self._clock() + self.cooldown  # the trial failed: wait again

    def _set(self, up: bool) -> None:
        self.up = up
        self.successes = 0
        self.changed_at = self._wall()
        if self.listener is not None:
            self.listener(self, up)

    # -- reading ----------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.up:
            return "up"
        return "half-open" if self.available() else "down"

    def status(self) -> dict[str, Any]:
        """This target's entry on the /status page (admin only; no secrets live here)."""
        return {
            "target": self.name,
            "url": self.url,
            "up": self.up,
            "state": self.state,
            "probed": self.probed,
            "consecutive_failures": self.failures,
            "consecutive_probe_successes": self.successes,
            "changed_at": rfc3339(self.changed_at),
            "last_error": self.last_error,
            "last_error_at": rfc3339(self.last_error_at),
            "last_probe_at": rfc3339(self.last_probe_at),
        }

    def __repr__(self) -> str:
        return f"TargetHealth({self.name}, {self.url}, {self.state}, failures={self.failures})"


class ServiceHealth:
    """The targets of one service and the routing between them.

    `on_change(service_health, target, up)` is called on every transition, whether a live call or a
    probe caused it (so `gateway_upstream_up` never lags passive marking). It may be set after
    construction; an exception in it is logged, never passed to the live call or probe that caused it.
    """

    def __init__(self, primary: str, backup: str | None = None, spec: HealthSpec | None = None, *,
                 service: str = "_", cooldown: float = MIN_COOLDOWN, on_change: ChangeCallback | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.service = service
        self.spec = spec
        self.cooldown = cooldown
        self.on_change = on_change
        # Without a health block the schema's defaults still give the passive threshold.
        limits = spec or HealthSpec()
        probed = spec is not None

        def target(name: TargetName, url: str) -> TargetHealth:
            return TargetHealth(name, url, limits.unhealthy_after, limits.healthy_after, probed=probed,
                                cooldown=cooldown, clock=clock, wall=wall, listener=self._changed)

        self.primary = target("primary", primary)
        self.backup = target("backup", backup) if backup else None
        self.key = self.make_key(primary, backup, spec, cooldown)
        self.ssl: Any = None  # the service's TLS settings for probes (aiohttp `ssl=`; None: default)

    @classmethod
    def from_spec(cls, service: str, upstream: UpstreamSpec, health: HealthSpec | None,
                  **kwargs: Any) -> ServiceHealth:
        kwargs.setdefault("cooldown", half_open_cooldown(upstream.timeout))
        return cls(upstream.url, upstream.backup, health, service=service, **kwargs)

    @staticmethod
    def make_key(primary: str, backup: str | None, spec: HealthSpec | None, cooldown: float) -> str:
        """Identity of everything the health state depends on. A reload that leaves the key alone
        keeps the existing object (state, counters and prober); any change starts afresh, since old
        counters say nothing about a different URL or threshold. The cool-down only matters without
        probes, so with a health block it is left out (a timeout change then keeps the state)."""
        material = {
            "url": primary,
            "backup": backup,
            "health": None if spec is None else spec.model_dump(mode="json"),
            "cooldown": cooldown if spec is None else None,
        }
        blob = json.dumps(material, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def targets(self) -> tuple[TargetHealth, ...]:
        return (self.primary,) if self.backup is None else (self.primary, self.backup)

    def target(self, name: str) -> TargetHealth | None:
        return next((t for t in self.targets if t.name == name), None)

    def pick(self) -> TargetHealth | None:
        """Where the next call goes: primary if up, else backup if up, else None: then no target is
        healthy and the caller answers with the fallback at once (SPEC 9). An unprobed down target
        whose cool-down is over is picked once as a half-open trial (the primary first, so the
        service returns to it)."""
        for t in self.targets:
            if t.admit():
                return t
        return None

    def other(self, target: TargetHealth) -> TargetHealth | None:
        """The alternative to `target` for the next attempt of the same call, if it may take one."""
        for t in self.targets:
            if t is not target and t.admit():
                return t
        return None

    @property
    def any_up(self) -> bool:
        return any(t.available() for t in self.targets)

    def status(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "probes": None if self.spec is None else {
                "path": self.spec.path, "interval_s": self.spec.interval, "timeout_s": self.spec.timeout,
            },
            "targets": [t.status() for t in self.targets],
        }

    def _changed(self, target: TargetHealth, up: bool) -> None:
        if up:
            log.info("upstream %s %s is up again (%s)", self.service, target.name, target.url)
        else:
            log.warning("upstream %s %s marked down after %d consecutive failures (%s): %s",
                        self.service, target.name, target.failures, target.url, target.last_error)
        if self.on_change is not None:
            try:
                self.on_change(self, target, up)
            except Exception:  # metrics or logging must not break the call that reported
                log.exception("health change callback failed for %s %s", self.service, target.name)

    def __repr__(self) -> str:
        return f"ServiceHealth({self.service}, {list(self.targets)})"


class HealthProber:
    """Probes every target of one service: `GET url + health.path` every `interval`, `timeout` each;
    2xx or 3xx is healthy (redirects are not followed: an answer at all means the host serves).

    Uses the gateway's shared aiohttp session (made with `trust_env=False`, so probes do not loop
    back through HTTP(S)_PROXY into the gateway); probes carry no provider credentials. One task per
    service; targets are probed concurrently, rounds never overlap (a round takes at most `timeout`).
    Nothing a probe does raises out of the task: errors and exceptions are failures.
    `on_change`, when given, is installed as the ServiceHealth's callback (it sees passive marks too).
    """

    def __init__(self, health: ServiceHealth, session: aiohttp.ClientSession, *,
                 on_change: ChangeCallback | None = None) -> None:
        if health.spec is None:
            raise ValueError(f"service {health.service} has no health block: nothing to probe")
        self.health = health
        self.spec: HealthSpec = health.spec
        self.session = session
        if on_change is not None:
            health.on_change = on_change
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start probing (first round at once); needs a running event loop. Idempotent."""
        if self.running:
            return
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"health-probe:{self.health.service}")

    def cancel(self) -> asyncio.Task[None] | None:
        """Stop from synchronous code; await the returned task (or call `stop`) to finish cleanly."""
        task = self._task
        self._task = None
        if task is not None:
            task.cancel()
        return task

    async def stop(self) -> None:
        """Cancel the probe task and wait until it has ended (an in-flight probe is abandoned)."""
        await _finish(self.cancel())

    async def probe_once(self) -> None:
        """One round: probe each target and report the result to it."""
        results = await asyncio.gather(*(self._probe(t) for t in self.health.targets))
        for target, (ok, error) in zip(self.health.targets, results, strict=True):
            target.record_probe(ok, error)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = max(self.spec.interval, MIN_PROBE_INTERVAL)
        while True:
            started = loop.time()
            try:
                await self.probe_once()
            except Exception:  # a bug here must not end probing: targets would freeze in their state
                log.exception("health probe round failed for %s", self.health.service)
            # Start to start, so `interval` is the probe rate whatever a round took.
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))

    async def _probe(self, target: TargetHealth) -> tuple[bool, str]:
        path = self.spec.path if self.spec.path.startswith("/") else "/" + self.spec.path
        timeout = self.spec.timeout
        try:
            # asyncio.timeout bounds the whole probe even where aiohttp's own timeout would not
            # (e.g. a resolver that ignores it); aiohttp's keeps its error specific.
            async with asyncio.timeout(timeout + 0.5):
                tls = self.health.ssl
                async with self.session.get(target.url + path, allow_redirects=False, ssl=True if tls is None else tls,
                                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                    status = resp.status
        except TimeoutError:
            return False, f"probe timed out after {timeout:g}s"
        except aiohttp.ClientError as exc:
            return False, f"probe failed: {type(exc).__name__}: {exc}"
        except Exception as exc:
            return False, f"probe failed: {type(exc).__name__}: {exc}"
        if 200 <= status < 400:
            return True, ""
        return False, f"probe answered HTTP {status}"


class HealthRegistry:
    """Every service's ServiceHealth and prober, carried across rules reloads.

    `apply` takes the ServiceHealth objects built from the new rule set: where a service's `key` is
    unchanged the existing object (state, counters, running prober) is kept and returned instead;
    changed or removed services have their probers cancelled. Use the returned mapping from then on.
    """

    def __init__(self, session: aiohttp.ClientSession, on_change: ChangeCallback | None = None) -> None:
        self.session = session
        self.on_change = on_change
        self.services: dict[str, ServiceHealth] = {}
        self._probers: dict[str, HealthProber] = {}
        self._retired: set[asyncio.Task[None]] = set()

    def apply(self, wanted: Mapping[str, ServiceHealth]) -> dict[str, ServiceHealth]:
        """Adopt a new rule set's health objects (synchronous, so it fits any reload path). Probers
        start now if an event loop is running, else at `start()`."""
        kept: dict[str, ServiceHealth] = {}
        for name, new in wanted.items():
            old = self.services.get(name)
            if old is not None and old.key == new.key:
                kept[name] = old
                continue
            self._retire(name)
            if self.on_change is not None:
                new.on_change = self.on_change
            kept[name] = new
            if new.spec is not None:
                self._probers[name] = HealthProber(new, self.session)
        for name in self.services.keys() - wanted.keys():
            self._retire(name)
        self.services = kept
        with contextlib.suppress(RuntimeError):  # no running loop yet: start() does it later
            asyncio.get_running_loop()
            self.start()
        return dict(kept)

    def start(self) -> None:
        for prober in self._probers.values():
            prober.start()

    def get(self, service: str) -> ServiceHealth | None:
        return self.services.get(service)

    def status(self) -> dict[str, dict[str, Any]]:
        return {name: h.status() for name, h in sorted(self.services.items())}

    async def aclose(self) -> None:
        """Stop every prober and wait for all of them, including those retired by earlier reloads."""
        for name in list(self._probers):
            self._retire(name)
        # Done-callbacks shrink the set while we wait, hence the copy.
        for task in list(self._retired):
            await _finish(task)
        self._retired.clear()

    def _retire(self, name: str) -> None:
        prober = self._probers.pop(name, None)
        if prober is None:
            return
        task = prober.cancel()
        if task is not None and not task.done():
            # Keep a reference until it ends: aclose() awaits it, and the loop must not lose it.
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)


async def _finish(task: asyncio.Task[None] | None) -> None:
    """Wait for a cancelled task to end without swallowing a cancellation aimed at the caller."""
    if task is None:
        return
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:
        log.exception("health probe task ended with an error")
