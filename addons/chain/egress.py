"""Egress control glue (SPEC 12): pass-through traffic (hosts no service owns) may only reach what
`gateway.egress` and the app's `passthrough:` allow, checked on the address actually dialled.

Like stripe/smokescreen: the name is resolved once, every resolved address is checked, and the
connection is pinned to the checked address (`server_connect` overrides `server.address`), so a
name that resolves elsewhere a moment later (DNS rebinding) changes nothing. It happens on every
connect mitmproxy makes (plain HTTP, CONNECT tunnels, raw TCP inside a tunnel), and a CONNECT to a
host no service owns is checked before its tunnel opens. Service calls never connect through
mitmproxy (the gateway sends them itself), so every `server_connect` is pass-through."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import weakref
from urllib.parse import urlsplit

from mitmproxy import connection, ctx, http
from mitmproxy.proxy import server_hooks

from addons.call import Call
from addons.chain.context import GatewayContext, answer, fail, fail_closed, internal_error
from addons.egress.policy import EgressPolicy, Endpoint, HostPatterns, IPAddress, parse_ip
from addons.errors import Code, GatewayError
from addons.explicit import EXPLICIT_HOST

log = logging.getLogger("gateway")

RESOLVE_TIMEOUT = 5.0
CACHE_TTL = 30.0  # resolved names, for service upstreams and listeners (not for pass-through pins)
PIN_TTL = 10.0  # a checked pass-through address is dialled within this long of its check
MAX_CACHE = 4096
ANY_ADDRESS = ("", "0.0.0.0", "::")


class Egress:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        gw.egress = self
        self.policy = EgressPolicy()
        self._patterns: dict[str, HostPatterns] = {}
        self._resolved_at = 0.0
        self._current = False  # whether `policy` reflects the rules and listeners now in force
        self._renewal: asyncio.Task[None] | None = None
        self._cache: dict[tuple[str, int], tuple[float, list[IPAddress]]] = {}
        self._pinned: weakref.WeakKeyDictionary[connection.Server, tuple[str, int]] = weakref.WeakKeyDictionary()
        gw.on_rules_changed.append(self._rules_changed)

    # -- configuration -------------------------------------------------------------------------------

    def configure(self, updated: set[str]) -> None:
        if updated & {"listen_host", "listen_port", "gateway_admin", "gateway_redis"}:
            self._resolved_at, self._current = 0.0, False  # the listeners moved: rebuilt before the next check

    def _rules_changed(self, compiled: object) -> None:
        self._resolved_at, self._current = 0.0, False
        rules = self.gw.compiled.rules if self.gw.compiled is not None else None
        if rules is None:
            return
        self._patterns = {name: HostPatterns(app.passthrough) for name, app in rules.apps.items()
                          if app.passthrough is not None}

    def _endpoints(self) -> list[tuple[str, int, str | None]]:
        """What pass-through must never reach: the gateway's listeners, its Redis, service upstreams."""
        named: list[tuple[str, int, str | None]] = []
        options = ctx.options
        named.append((options.listen_host or "", int(options.listen_port or 8080), None))
        admin = getattr(options, "gateway_admin", "off")
        if admin and admin != "off" and ":" in admin:
            host, _, port = admin.rpartition(":")
            if port.isdigit():
                named.append((host.strip("[]"), int(port), None))
        redis = getattr(options, "gateway_redis", "")
        if redis:
            parts = urlsplit(redis)
            named.append((parts.hostname or "127.0.0.1", parts.port or 6379, None))
        compiled = self.gw.compiled
        if compiled is not None:
            for name, runtime in compiled.services.items():
                for target in runtime.targets.values():
                    named.append((target.host, target.port, name))
        return named

    async def _refresh(self) -> None:
        if time.monotonic() - self._resolved_at < CACHE_TTL:
            return
        self._resolved_at = time.monotonic()
        if self._current:
            # Only the addresses of names are renewed: this call keeps the policy in force, and no
            # call waits on DNS for the service upstreams and listeners.
            if self._renewal is None or self._renewal.done():
                self._renewal = asyncio.create_task(self._rebuild())
            return
        await self._rebuild()  # new rules or listeners: in force before the next check

    async def _rebuild(self) -> None:
        compiled = self.gw.compiled
        spec = compiled.gateway.egress if compiled is not None else None
        endpoints = self._endpoints()
        # A listener on every address: any private address is it, and so are this host's own
        # (public) addresses, which a caller might name instead.
        everywhere = {port for host, port, service in endpoints if service is None and host in ANY_ADDRESS}
        names = [e for e in endpoints if not (e[2] is None and e[0] in ANY_ADDRESS)]
        names += [(socket.gethostname(), port, None) for port in everywhere]
        results = await asyncio.gather(*(self._resolve(host, port, cache=True) for host, port, _ in names),
                                       return_exceptions=True)
        protected = [Endpoint(None, port) for port in everywhere]
        services: dict[tuple[IPAddress, int], str] = {}
        for (_host, port, service), addresses in zip(names, results, strict=True):
            if isinstance(addresses, BaseException):
                continue  # a name that does not resolve now: nothing to protect at an address
            for ip in addresses:
                if service is None:
                    protected.append(Endpoint(ip, port))
                else:
                    services.setdefault((ip, port), service)
        self.policy = EgressPolicy(
            deny_private=spec.deny_private if spec is not None else True,
            allow_cidrs=tuple(spec.allow_cidrs) if spec is not None else (),
            protected=tuple(protected), service_addresses=services)
        self._current = True

    async def _resolve(self, host: str, port: int, cache: bool = False) -> list[IPAddress]:
        literal = parse_ip(host)
        if literal is not None:
            return [literal]
        key = (host.lower(), port)
        hit = self._cache.get(key)
        if cache and hit is not None and hit[0] > time.monotonic():
            return hit[1]
        loop = asyncio.get_running_loop()
        # getaddrinfo runs in the loop's thread pool: the event loop never blocks on DNS. It also
        # reads the numeric spellings (127.1, 2130706433, 0x7f000001) as the socket layer would.
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
        seen: list[IPAddress] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            ip = parse_ip(str(sockaddr[0]))
            if ip is not None and ip not in seen:
                seen.append(ip)
        if len(self._cache) >= MAX_CACHE:
            self._cache.clear()
        self._cache[key] = (time.monotonic() + (CACHE_TTL if cache else PIN_TTL), seen)
        return seen

    async def _check(self, host: str, port: int) -> tuple[IPAddress | None, str | None]:
        await self._refresh()
        try:
            addresses = await self._resolve(host, port)
        except (OSError, TimeoutError, UnicodeError) as exc:
            return None, f"{host} does not resolve ({type(exc).__name__})"
        named = parse_ip(host) is None
        return self.policy.choose(addresses, port, named)

    def _app_may(self, app: str | None, host: str) -> bool:
        patterns = self._patterns.get(app) if app else None
        return patterns is None or patterns.match(host)

    # -- a pass-through request (called from Route) ---------------------------------------------------

    async def admit(self, flow: http.HTTPFlow, call: Call) -> None:
        request = flow.request
        target = request.host.lower().rstrip(".")
        named = call.host.lower().rstrip(".")
        try:
            if target != named and (parse_ip(target) is None or parse_ip(target) != parse_ip(named)):
                # The Host header names one host, the connection goes to another: whichever a service
                # owns, this would be a way around it.
                raise GatewayError(Code.CALLER_FORBIDDEN, f"the Host header names {call.host} but the request "
                                   f"goes to {request.host}: pass-through needs them to agree")
            if not self._app_may(call.app, target):
                raise GatewayError(Code.CALLER_FORBIDDEN, f"app {call.app} may not reach {request.host} "
                                   "(not in its passthrough list)")
            _ip, reason = await self._check(request.host, request.port)
            if reason is not None:
                call.error = f"egress refused: {reason}"
                raise GatewayError(Code.CALLER_FORBIDDEN, f"egress to {request.host} is not allowed")
        except GatewayError as error:
            fail(flow, call, error)

    # -- CONNECT: checked before the tunnel opens -----------------------------------------------------

    @fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        try:
            await self._connect(flow)
        except Exception as exc:
            internal_error(self.gw, flow, "Egress.http_connect", exc)
            self.gw.finish(flow)

    async def _connect(self, flow: http.HTTPFlow) -> None:
        compiled = self.gw.compiled
        if flow.response is not None or compiled is None:
            return
        host, port = flow.request.host, flow.request.port
        if host.lower() == EXPLICIT_HOST or compiled.router.owner(host) is not None:
            return  # a service's host: its calls are answered by the gateway, never relayed
        call = self.gw.call(flow)
        app = self.gw.tunnels.get(flow.client_conn)
        if app is None and flow.client_conn.peername:
            app = compiled.apps.by_address(flow.client_conn.peername[0])
        call.app, call.passthrough = app, True
        message: str | None = None
        if compiled.gateway.unknown_hosts == "deny":
            message = f"egress to {host} is not allowed (no service owns it)"
        elif not self._app_may(app, host):
            message = f"app {app} may not reach {host} (not in its passthrough list)"
        else:
            _ip, reason = await self._check(host, port)
            if reason is not None:
                call.error = f"egress refused: {reason}"
                message = f"egress to {host} is not allowed"
        if message is not None:
            answer(flow, call, Code.CALLER_FORBIDDEN, message)
            self.gw.finish(flow)

    # -- every connect: pinned to the checked address -------------------------------------------------

    @fail_closed
    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server = data.server
        if server.via is not None or server.address is None or server.error:
            return
        host, port = server.address[0], server.address[1]
        compiled = self.gw.compiled
        try:
            if compiled is None:
                reason: str | None = "the gateway has no rules loaded"
                ip = None
            elif host.lower() == EXPLICIT_HOST or compiled.router.owner(host) is not None:
                # A service's calls are sent by the gateway itself; mitmproxy connecting to a service
                # host means something inside a tunnel (raw TCP, another port) tried to go around it.
                reason, ip = f"{host} is a service's host: only the gateway's own calls go there", None
            else:
                ip, reason = await self._check(host, port)
        except Exception as exc:
            log.error("gateway: egress check failed for a connection: %s", type(exc).__name__)
            ip, reason = None, "internal error"
        if reason is not None or ip is None:
            server.error = "egress refused by the gateway"
            log.warning("gateway: egress refused: connection to %s", self.gw.redactor.text(f"{host}:{port}: {reason}"))
            return
        self._pinned[server] = (host, port)
        server.address = (str(ip), port)

    @fail_closed
    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        # Give the open connection its name back, so the requests that follow on the same client
        # connection (keep-alive, a tunnel's) match it and reuse it instead of connecting anew; it
        # stays connected to the pinned address (`peername`). mitmproxy refuses a plain assignment
        # on an open connection because that would mean a new destination; this is only the name.
        original = self._pinned.pop(data.server, None)
        if original is not None:
            object.__setattr__(data.server, "address", original)
