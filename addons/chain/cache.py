"""The response cache in the call path (SPEC 13): thin glue around `addons/cache/`.

Two steps of the pipeline: `CacheLookup` runs before Quota (so a hit, or a call that will share
another call's provider answer, is kept out of `per: service` quotas), `CachedForward` wraps
Forward: it answers hits, makes identical misses share one provider call, stores successful
answers and answers from an expired copy while every target fails (`stale_if_error`)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web
from mitmproxy import ctx, http
from mitmproxy.net.http import status_codes

from addons.cache import policy
from addons.cache.flight import SingleFlight
from addons.cache.policy import BYPASS, HIT, MISS, STALE, CallCache, Entry
from addons.cache.schema import CacheSpec, GatewayCacheSpec
from addons.cache.stores.memory import MemoryCache
from addons.call import Call
from addons.chain.context import GatewayContext, Step
from addons.explicit import EXPLICIT_HOST
from addons.rules.fields import NAME_RE
from addons.runtime import Compiled

if TYPE_CHECKING:  # redis-py is imported only with gateway_redis set
    from addons.cache.stores.redis import RedisCache

log = logging.getLogger("gateway")

HEADER = "X-Gateway-Cache"
MAX_PENDING_STORES = 1000  # Redis writes in flight; past this, answers are not stored (memory stays bounded)


def cache_spec(call: Call) -> CacheSpec | None:
    route = call.route
    if route is None or route.spec is None:
        return None
    if route.method_spec is not None and route.method_spec.cache is not None:
        return route.method_spec.cache
    return route.spec.cache


def _fingerprint(spec: Any) -> str:
    """A service's cache configuration: when it changes, its entries go."""
    blocks = {"": spec.cache.model_dump() if spec.cache else None}
    blocks.update({name: m.cache.model_dump() for name, m in spec.methods.items() if m.cache is not None})
    return json.dumps(blocks, sort_keys=True, default=str)


class Cache:
    """The store (memory, or Redis with `gateway_redis`), the flights in progress, and the admin side."""

    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        gw.cache = self
        self.max_memory = GatewayCacheSpec().max_memory
        self.store: MemoryCache | RedisCache = MemoryCache(self.max_memory)
        self.flights = SingleFlight()
        self._configs: dict[str, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        gw.on_rules_changed.append(self._rules_changed)

    def configure(self, updated: set[str]) -> None:
        if "gateway_redis" not in updated:
            return
        url = ctx.options.gateway_redis.strip()
        old = self.store
        try:
            if url:
                from addons.cache.stores.redis import RedisCache

                self.store = RedisCache(url)
            else:
                self.store = MemoryCache(self.max_memory)
        except ValueError:
            return  # a bad URL: the State addon refuses the option with a clear message
        self._spawn(old.close())

    def done(self) -> None:
        # Sync, like State.done: mitmproxy calls it synchronously when it re-imports the script.
        for task in list(self._tasks):
            task.cancel()
        self._spawn(self.store.close())

    def _rules_changed(self, compiled: Compiled) -> None:
        self.max_memory = compiled.gateway.cache.max_memory
        if isinstance(self.store, MemoryCache):
            self.store.resize(self.max_memory)
        configs = {name: _fingerprint(spec) for name, spec in compiled.rules.services.items()}
        for name, before in self._configs.items():
            if configs.get(name) != before:
                # A removed service, or a changed cache block: its old entries must not answer.
                self._spawn(self._purge_quietly(name))
        self._configs = configs

    async def _purge_quietly(self, service: str) -> None:
        try:
            await self.store.purge(service)
        except Exception as exc:  # Redis down: the entries expire by themselves
            log.warning("gateway: cache: entries of %s not purged (%s)", service, type(exc).__name__)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coroutine)
        except RuntimeError:
            coroutine.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the call path ----------------------------------------------------------------------------

    def lookup(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        call = self.gw.call(flow)
        spec = cache_spec(call)
        if spec is None:
            return None
        route = call.route
        assert route is not None
        request = flow.request
        http_method = (route.method_spec.method if call.host == EXPLICIT_HOST and route.method_spec
                       and route.method_spec.method else request.method)
        directive = policy.caller_directive(request.headers.get("cache-control"), request.headers.get("pragma"))
        if http_method not in spec.methods or directive == "bypass":
            call.cache = CallCache(BYPASS)
            call.headers[HEADER] = BYPASS
            return None
        query = ([(k, v) for k, v in request.query.items(multi=True) if k not in route.consumed]
                 if "query" in spec.key else [])
        headers = {p[7:]: v for p in spec.key if p.startswith("header:")
                   and (v := request.headers.get(p[7:])) is not None}
        key = policy.build_key(spec, route.service, route.method, http_method, route.path,
                        "raw" if call.raw else "envelope", app=call.app, query=query,
                        body=(request.raw_content or b"") if "body" in spec.key else b"", header=headers)
        state = call.cache = CallCache(MISS, key, spec)
        if directive == "refresh":
            self._decide(call, state, None)
            return None
        if isinstance(self.store, MemoryCache):
            self._decide(call, state, self.store.get_now(key))
            return None
        return self._lookup_shared(call, state)

    async def _lookup_shared(self, call: Call, state: CallCache) -> None:
        self._decide(call, state, await self.store.get(state.key))

    def _decide(self, call: Call, state: CallCache, entry: Entry | None) -> None:
        if entry is not None:
            if entry.fresh_until > time.time():
                state.entry, state.result = entry, HIT
            else:
                state.stale = entry
        if state.entry is None:
            state.flight = self.flights.get(state.key)
            if state.flight is not None:
                state.result = HIT
        call.headers[HEADER] = state.result

    def forward(self, flow: http.HTTPFlow, forward: Step) -> Awaitable[None] | None:
        call = self.gw.call(flow)
        state = call.cache
        if state is None:
            return forward.on_request(flow)
        if state.result == BYPASS:
            self._count(call, BYPASS)
            return forward.on_request(flow)
        if state.entry is not None:
            self._serve(flow, call, state.entry, HIT)
            return None
        flight = state.flight or self.flights.get(state.key)
        if flight is not None:
            return self._follow(flow, call, flight, forward)  # type: ignore[arg-type]
        return self._lead(flow, call, state, forward)

    async def _lead(self, flow: http.HTTPFlow, call: Call, state: CallCache, forward: Step) -> None:
        future = self.flights.lead(state.key)
        shared: tuple[Entry, str] | None = None
        try:
            pending = forward.on_request(flow)
            if pending is not None:
                await pending
            shared = self._after_forward(flow, call, state)
        finally:
            self.flights.land(state.key, future, shared)

    async def _follow(self, flow: http.HTTPFlow, call: Call, flight: asyncio.Future[Any], forward: Step) -> None:
        shared = await SingleFlight.follow(flight)
        if shared is None:  # the leader ended without an answer: this call asks the provider itself
            pending = forward.on_request(flow)
            if pending is not None:
                await pending
            self._count(call, MISS)
            return
        entry, result = shared
        self._serve(flow, call, entry, result)

    def _after_forward(self, flow: http.HTTPFlow, call: Call, state: CallCache) -> tuple[Entry, str] | None:
        response = flow.response
        spec = state.spec
        if response is None or spec is None:
            return None
        now = time.time()
        fields = response.headers.fields
        body = response.raw_content or b""
        code = call.code if call.code is not None else -1000
        if policy.storable(spec, code, response.status_code, call.attempts, fields, len(body)):
            entry = policy.capture(code, response.status_code, fields, body, call.request_id, now, spec.ttl,
                            spec.stale_if_error)
            self._store(state.key, entry)
            self._count(call, MISS)
            return entry, HIT
        fallback = call.attempts == 0 and call.target is None
        if state.stale is not None and policy.serves_stale(call.code, fallback):
            self._serve(flow, call, state.stale, STALE)
            return state.stale, STALE
        self._count(call, MISS)
        # Not stored, but the calls waiting on this one get the same answer: it is what the provider said.
        return policy.capture(code, response.status_code, fields, body, call.request_id, now), MISS

    def _store(self, key: str, entry: Entry) -> None:
        if isinstance(self.store, MemoryCache):
            self.store.set_now(key, entry)
        elif len(self._tasks) < MAX_PENDING_STORES:
            self._spawn(self.store.set(key, entry))  # the answer does not wait for Redis

    def _serve(self, flow: http.HTTPFlow, call: Call, entry: Entry, result: str) -> None:
        call.headers[HEADER] = result
        if call.cache is not None:
            call.cache.result = result
        body = entry.render(call.request_id)
        fields = [*entry.headers, (b"Content-Length", str(len(body)).encode()),
                  (b"X-Request-ID", call.request_id.encode())]
        for name, value in call.headers.items():
            fields.append((name.encode("latin-1"), value.encode("latin-1")))
        now = time.time()
        flow.response = http.Response(b"HTTP/1.1", entry.status,
                                      status_codes.RESPONSES.get(entry.status, "").encode(),
                                      http.Headers(fields), body, None, now, now)
        if call.code is None or result != STALE:
            call.attempts = 0
        call.code, call.status = entry.code, entry.status
        call.message = "success" if entry.code == 0 else f"{call.rule}: the answer of an identical call"
        self._count(call, result)

    def _count(self, call: Call, result: str) -> None:
        self.gw.metrics.cache_result(call.service, call.method, result)

    # -- admin ------------------------------------------------------------------------------------

    async def purge(self, service: str, method: str | None = None) -> int:
        return await self.store.purge(service, method)

    async def status(self) -> dict[str, Any]:
        status = await self.store.status()
        status["in_flight"] = len(self.flights)
        return status

    async def purge_request(self, request: web.Request) -> web.Response:
        """`DELETE /cache/<service>[/<method>]`: drop the entries of a service or one of its methods."""
        service = request.match_info["service"]
        method = request.match_info.get("method")
        compiled = self.gw.compiled
        spec = compiled.rules.services.get(service) if compiled is not None and NAME_RE.match(service) else None
        if spec is None:
            return _json({"error": "no such service"}, 404)
        if method is not None and method != "_" and method not in spec.methods:
            return _json({"error": f"{service} has no method of that name"}, 404)
        try:
            purged = await self.purge(service, method)
        except Exception as exc:
            log.warning("gateway: cache purge of %s failed: %s", service, type(exc).__name__)
            return _json({"error": f"cache store unavailable ({type(exc).__name__})"}, 503)
        log.info("gateway: cache: purged %d entries of %s%s", purged, service, f".{method}" if method else "")
        return _json({"purged": purged, "service": service, "method": method})


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body) + "\n", status=status, content_type="application/json")


class CacheLookup:
    """Before Quota: what the cache holds for this call (a Redis lookup is its one round trip)."""

    def __init__(self, gw: GatewayContext, cache: Cache) -> None:
        self.gw = gw
        self.cache = cache

    def on_request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return self.cache.lookup(flow)


class CachedForward:
    """In Forward's place: a hit answers here; a miss goes through Forward (once per key in flight)."""

    def __init__(self, gw: GatewayContext, cache: Cache, forward: Step) -> None:
        self.gw = gw
        self.cache = cache
        self.forward = forward

    def on_request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return self.cache.forward(flow, self.forward)
