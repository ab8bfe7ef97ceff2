"""The state store behind quotas, nonces and tokens: in memory, or Redis (`gateway_redis`) with the
`state_failure` policy of gateway.yaml for the time Redis cannot be reached."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, exceptions

from addons.chain.context import GatewayContext
from addons.runtime import Compiled
from addons.state.base import StateUnavailable
from addons.state.memory import MemoryStore

if TYPE_CHECKING:  # redis-py is imported only with gateway_redis set (about 0.2 s of every start)
    from addons.state.fallback import FallbackStore
    from addons.state.redis import RedisStore

log = logging.getLogger("gateway")

# How long a Redis answer may take before the call is decided by the local fallback. A healthy Redis
# answers in well under a millisecond, but the clock runs on mitmproxy's one event loop: under a
# burst of a few hundred concurrent calls one loop iteration was measured at 0.5-1.6 s on a busy
# two-core machine, and a timer that expires during such an iteration fires before the reply
# (already in the socket) is read. With the store's default of 50 ms, a healthy Redis was declared
# down under load and each instance went on counting locally, admitting more than the limit across
# the fleet. 2 s is what Kong's Redis rate limiting uses too. A stopped Redis (refused connection)
# fails at once whatever this is; one that swallows packets costs this much only to the calls in
# flight when it goes, then FallbackStore's circuit breaker lets one call per second probe it.
REDIS_TIMEOUT = 2.0
# Connects happen at start (done before traffic, see _warm_up) and when Redis comes back. Shorter
# than the answer timeout, so a probe of an unreachable host costs its call less; long enough that a
# loaded loop does not keep an instance from ever reconnecting.
REDIS_CONNECT_TIMEOUT = 1.0
# The pool's size, given here so _warm_up opens every connection: a few connections carry all the
# round trips one Python process can make (a burst of 400 calls over two instances stayed exact).
REDIS_CONNECTIONS = 8
# How often a URL that could not be verified (unreachable at start, or misconfigured) is tried again.
VERIFY_INTERVAL = 1.0


class State:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        gw.on_rules_changed.append(self._rules_changed)
        self._tasks: set[asyncio.Task[None]] = set()  # referenced until done, or the loop may drop them
        self._shared: FallbackStore | None = None  # gw.store when it is Redis with its fallback

    def load(self, loader) -> None:
        loader.add_option("gateway_redis", str, "",
                          "Shared state store (quotas, tokens, nonces): redis://, rediss://, "
                          "redis+cluster://h1:p1,h2:p2 or redis+sentinel://h1:p1,h2:p2/MASTER; "
                          "empty: in memory.")

    def configure(self, updated: set[str]) -> None:
        if "gateway_redis" not in updated:
            return
        url = ctx.options.gateway_redis.strip()
        old = self.gw.store
        if not url:
            self.gw.store = MemoryStore()
            self._shared = None
        else:
            from addons.state.fallback import FallbackStore
            from addons.state.redis import RedisStore, redact_url

            # Before the first rules load (the State addon configures first) the defaults apply;
            # _rules_changed sets the configured policy and instances as soon as the rules are in.
            gateway = self.gw.compiled.gateway if self.gw.compiled else None
            try:
                shared = RedisStore(url, timeout=REDIS_TIMEOUT, connect_timeout=REDIS_CONNECT_TIMEOUT,
                                    max_connections=REDIS_CONNECTIONS)
            except ValueError as exc:
                raise exceptions.OptionsError(f"{exc} (got {redact_url(url)!r})") from None
            # FallbackStore logs the outage and the recovery itself, once per transition; the
            # metric counts every call that Redis did not serve.
            self.gw.store = self._shared = FallbackStore(
                shared, MemoryStore(),
                policy=gateway.state_failure if gateway else "open",
                instances=gateway.instances if gateway else 1,
                on_error=self.gw.metrics.state_error,
            )
            log.info("gateway: shared state in Redis (%s) at %s", shared.kind, shared.url)
            self._spawn(self._verify(self._shared))
        if old is not None:
            self._spawn(old.close())

    def _rules_changed(self, compiled: Compiled) -> None:
        if self._shared is not None:
            self._shared.configure(policy=compiled.gateway.state_failure, instances=compiled.gateway.instances)

    async def _verify(self, store: FallbackStore) -> None:
        """Tell a usable URL from a misconfigured one at start (SPEC 15), and keep trying while it is
        unreachable or misconfigured: the instance is not ready while misconfigured, and becomes
        usable as soon as the mistake is fixed (a password set on the server, a certificate renewed)."""
        from addons.state.redis import StateMisconfigured

        shared = store.shared
        while True:
            try:
                await shared.verify()
            except StateMisconfigured as exc:
                store.misconfigure(str(exc))
            except StateUnavailable as exc:
                # An outage, not a mistake: the first call that needs Redis reports it once.
                log.debug("gateway: Redis not reachable at start: %s", exc)
            else:
                store.misconfigure(None)
                store.checked = True
                await self._warm_up(shared)
                await self._watch(store)
                return
            store.checked = True
            await asyncio.sleep(VERIFY_INTERVAL)

    async def _watch(self, store: FallbackStore) -> None:
        """After start, a call may find the URL misconfigured (a password changed on the server):
        verify again until it works."""
        while True:
            await asyncio.sleep(VERIFY_INTERVAL)
            if store.misconfigured is None:
                continue
            try:
                await store.shared.verify()
            except StateUnavailable:
                continue
            store.misconfigure(None)

    async def _warm_up(self, shared: RedisStore) -> None:
        """Open the pool's connections now, while the loop is idle, instead of during the first burst
        of calls, where each handshake is a few more round trips exposed to the loop's delays."""
        await asyncio.gather(*(shared.ping() for _ in range(REDIS_CONNECTIONS)), return_exceptions=True)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coroutine)
        except RuntimeError:  # no loop (offline use of the addon): nothing to warm up or close
            coroutine.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def done(self) -> None:
        # Sync on purpose: mitmproxy calls `done` synchronously when it re-imports the script, and an
        # async one would stop the hooks after it (and the reloaded chain) from running.
        for task in list(self._tasks):
            task.cancel()
        if self.gw.store is not None:
            self._spawn(self.gw.store.close())
