"""The state store behind quotas, nonces and tokens: in memory, or Redis (`gateway_redis`) with the
`state_failure` policy of gateway.yaml for the time Redis cannot be reached."""

from __future__ import annotations

import logging

from mitmproxy import ctx, exceptions

from addons.chain.context import GatewayContext
from addons.runtime import Compiled
from addons.state.fallback import FallbackStore
from addons.state.memory import MemoryStore
from addons.state.redis import RedisStore, redact_url

log = logging.getLogger("gateway")


class State:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        gw.on_rules_changed.append(self._rules_changed)

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("gateway_redis", str, "",
                          "redis:// URL of the shared state store (quotas, tokens, nonces); empty: in memory.")

    def configure(self, updated: set[str]) -> None:
        if "gateway_redis" not in updated:
            return
        url = ctx.options.gateway_redis.strip()
        old = self.gw.store
        if not url:
            self.gw.store = MemoryStore()
        else:
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise exceptions.OptionsError(f"gateway_redis must be a redis:// URL, got {redact_url(url)!r}")
            gateway = self.gw.compiled.gateway if self.gw.compiled else None
            self.gw.store = FallbackStore(
                RedisStore(url), MemoryStore(),
                policy=gateway.state_failure if gateway else "open",
                instances=gateway.instances if gateway else 1,
                on_state_change=self._state_changed, on_error=self.gw.metrics.state_error,
            )
            log.info("gateway: shared state in Redis at %s", redact_url(url))
        if old is not None:
            self._close_later(old)

    def _rules_changed(self, compiled: Compiled) -> None:
        store = self.gw.store
        if isinstance(store, FallbackStore):
            store.configure(policy=compiled.gateway.state_failure, instances=compiled.gateway.instances)

    def _state_changed(self, available: bool, error: str) -> None:
        if available:
            log.warning("gateway: Redis is reachable again; exact shared counting resumed")
        else:
            policy = self.gw.compiled.gateway.state_failure if self.gw.compiled else "open"
            what = ("counting locally (limit / instances); answers carry X-Gateway-Degraded: state"
                    if policy == "open" else "refusing calls that need it with -3002 (state_failure: closed)")
            log.error("gateway: Redis unreachable (%s); %s", error, what)

    def _close_later(self, store: object) -> None:
        import asyncio

        close = getattr(store, "close", None)
        if close is None:
            return
        try:
            asyncio.get_running_loop().create_task(close())
        except RuntimeError:
            pass

    async def done(self) -> None:
        if self.gw.store is not None:
            await self.gw.store.close()
