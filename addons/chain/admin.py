"""The admin listener (`gateway_admin`, SPEC 10): a small HTTP server beside the proxy port.

    /metrics   Prometheus text format of the gateway's registry
    /healthz   200 while the process is alive (a liveness probe: restart me if this fails)
    /readyz    200 when rules are loaded and serving; 503 before. A Redis outage does not make the
               instance unready (it degrades, and says so in the body): a fleet sharing one Redis
               would otherwise drop out of its load balancer all at once.
    /          the status page for people (HTML, refreshing itself; addons/statuspage.py)
    /status    JSON for operators: rule-set version and files, services (and why one is disabled),
               apps, target health, state store, reloads and their errors, remote rules, access-log
               drops. Every string goes through the redactor, and secret-named fields are masked.

The socket is bound in `configure` (synchronously), so a port in use or a bad address fails the
option with a clear message: at start mitmproxy exits, and a runtime `--set` is refused while the old
listener keeps serving. The aiohttp server is started from a sync `running()` (an `async def running`
breaks mitmproxy's script reload) and closed synchronously in `done()`."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from mitmproxy import ctx, exceptions
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from addons.chain.context import GatewayContext
from addons.redact import MASK, Redactor, is_secret_name
from addons.timestamps import rfc3339


class RulesSources(Protocol):
    """What /status and /readyz show of where the rules come from (the `Watch` addon)."""

    def watch_status(self) -> dict[str, Any]: ...

    def remote_status(self) -> dict[str, Any] | None: ...

    def remote_settled(self) -> bool: ...

log = logging.getLogger("gateway")

OFF = ("", "off", "none", "false", "0")


def parse_address(spec: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` to (host, port); raises OptionsError with what was expected."""
    host, sep, port = spec.rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise exceptions.OptionsError(
            f"gateway_admin must be host:port (e.g. 127.0.0.1:9091) or 'off', got {spec!r}")
    return host, int(port)


def bind(host: str, port: int) -> socket.socket:
    """A listening, non-blocking socket; raises OptionsError naming the address and the reason."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise exceptions.OptionsError(
            f"gateway_admin: cannot listen on {host}:{port}: unknown host ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # Reusing a port in TIME_WAIT after a restart is fine; two live listeners still conflict.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        hint = " (another process listens there)" if exc.errno in (98, 48, 10048) else ""
        raise exceptions.OptionsError(
            f"gateway_admin: cannot listen on {host}:{port}: {exc.strerror or exc}{hint}; "
            f"set gateway_admin (GATEWAY_ADMIN) to a free host:port, or 'off'") from None
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def clean(value: Any, redactor: Redactor, key: str = "") -> Any:
    """A status value made safe to show: secret-named fields masked, URLs redacted as URLs (the
    password of user:password@ and secret-named query parameters), other strings as text."""
    if isinstance(value, dict):
        return {k: MASK if isinstance(k, str) and is_secret_name(k) else clean(v, redactor, str(k))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v, redactor, key) for v in value]
    if isinstance(value, str):
        if key == "url" or key.endswith("_url"):
            return redactor.url(value)
        return redactor.text(value)
    return value


class Admin:
    def __init__(self, gw: GatewayContext, watch: RulesSources | None = None) -> None:
        self.gw = gw
        self.watch = watch
        self.address = ""  # the gateway_admin value the current socket was bound for
        self.port: int | None = None  # the port actually bound (gateway_admin may name port 0)
        self._sock: socket.socket | None = None
        self._server: asyncio.AbstractServer | None = None
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = False

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("gateway_admin", str, "127.0.0.1:9091",
                          "Admin listener host:port for /metrics, /healthz, /readyz and /status; 'off' disables it.")

    def configure(self, updated: set[str]) -> None:
        if "gateway_admin" not in updated:
            return
        spec = ctx.options.gateway_admin.strip()
        if spec == self.address and (self._sock is not None or spec.lower() in OFF):
            return
        sock: socket.socket | None = None
        host = ""
        if spec.lower() not in OFF:
            host, port = parse_address(spec)
            same_port = self._sock is not None and self.port == port
            if same_port:
                # Moving to another host on the same port: the old socket must go first.
                self._stop()
            sock = bind(host, port)  # raises: the option is refused and the old listener (if any) stays
        self._stop()
        self._sock, self.address = sock, spec
        self.port = sock.getsockname()[1] if sock is not None else None
        if sock is not None and not is_loopback(host):
            log.warning("gateway: the admin listener on %s is reachable from other machines; /status and "
                        "/metrics have no authentication, so restrict who can reach that port", spec)
        if sock is None:
            log.info("gateway: admin listener off")
        elif self._running:
            self._start()

    def running(self) -> None:
        # Sync on purpose: an `async def running` stops mitmproxy's script reload from working.
        self._running = True
        if self._sock is not None and self._task is None:
            self._start()

    def done(self) -> None:
        self._running = False
        self._stop()

    # -- the server -------------------------------------------------------------------------------

    def _start(self) -> None:
        sock = self._sock
        assert sock is not None
        self._task = asyncio.get_running_loop().create_task(self._serve(sock), name="gateway admin listener")

    async def _serve(self, sock: socket.socket) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/status", self.status)
        app.router.add_get("/", self.index)
        if self.gw.cache is not None:
            app.router.add_delete("/cache/{service}", self.gw.cache.purge_request)
            app.router.add_delete("/cache/{service}/{method}", self.gw.cache.purge_request)
        # No access log: scrapers hit /metrics every few seconds and would drown the gateway's log.
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        server = runner.server
        assert server is not None  # set by setup()
        try:
            self._server = await asyncio.get_running_loop().create_server(server, sock=sock)
        except Exception as exc:
            log.error("gateway: admin listener on %s did not start: %s", self.address, exc)
            await runner.cleanup()
            raise
        log.info("gateway: admin listener on http://%s:%s (/metrics /healthz /readyz /status)",
                 *_shown(sock.getsockname()))

    def _stop(self) -> None:
        """Close the listener now (synchronously: done() may run when no more loop iterations come)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        if self._server is not None:
            self._server.close()  # closes the listening socket at once
            self._server = None
        elif self._sock is not None:
            self._sock.close()
        self._sock = None
        runner, self._runner = self._runner, None
        if runner is not None:
            try:
                # Open keep-alive connections (a scraper's) are closed by the runner's cleanup.
                asyncio.get_running_loop().create_task(runner.cleanup())
            except RuntimeError:
                pass  # no loop left: the process is ending and takes the connections with it

    # -- handlers ---------------------------------------------------------------------------------

    async def index(self, _request: web.Request) -> web.Response:
        """The status page for people (SPEC 19): HTML, no JavaScript, refreshing itself."""
        from addons.chain.statuspage import page_html

        try:
            text = await page_html(self)
        except Exception as exc:  # never a traceback (which may quote data) on the page
            log.error("gateway: status page failed: %s", type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
            return web.Response(text=f"status page unavailable ({type(exc).__name__})\n", status=500)
        return web.Response(text=text, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.gw.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, _request: web.Request) -> web.Response:
        return _json({"status": "alive", "uptime_s": round(time.time() - self.gw.started, 3)})

    async def readyz(self, _request: web.Request) -> web.Response:
        ready, reason = self.readiness()
        body: dict[str, Any] = {"ready": ready}
        if reason:
            body["reason"] = reason
        compiled = self.gw.compiled
        if compiled is not None:
            body["rules_version"] = compiled.rules.version
        degraded = self.degraded()
        if degraded:
            body["degraded"] = degraded
        remote = self.watch.remote_status() if self.watch is not None else None
        if remote is not None:
            body["remote_rules"] = remote["in_force"]  # feed | cache (the saved copy) | none
        return _json(body, 200 if ready else 503)

    async def status(self, _request: web.Request) -> web.Response:
        try:
            document = self.status_document()
            if self.gw.cache is not None:
                document["cache"] = await self.gw.cache.status()
        except Exception as exc:  # never a traceback (which may quote data) on the page
            log.error("gateway: /status failed: %s", type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
            return _json({"error": f"status unavailable ({type(exc).__name__})"}, 500)
        return _json(document)

    # -- what they report -------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if self.gw.compiled is None:
            return False, "no rules loaded"
        if self.watch is not None and not self.watch.remote_settled():
            return False, "no remote rules yet: gateway_rules_url has not answered and no saved copy exists"
        state = _store_status(self.gw.store) or {}
        if state.get("misconfigured"):  # a URL that cannot work is not an outage to ride out (SPEC 15)
            return False, f"gateway_redis cannot be used: {state['misconfigured']}"
        if state.get("checked") is False:
            return False, "checking gateway_redis"
        return True, ""

    def degraded(self) -> list[str]:
        what: list[str] = []
        store = self.gw.store
        status = _store_status(store)
        if status is not None and status.get("available") is False:
            what.append("state")
        return what

    def status_document(self) -> dict[str, Any]:
        gw = self.gw
        compiled = gw.compiled
        redactor = self.gw.redactor
        rules = compiled.rules if compiled is not None else None
        ready, reason = self.readiness()
        services: dict[str, Any] = {}
        apps: dict[str, Any] = {"enabled": [], "disabled": {}}
        if rules is not None:
            for name, spec in sorted(rules.services.items()):
                services[name] = {
                    "enabled": True,
                    "disabled_reason": None,
                    "file": rules.source_of.get(f"service:{name}"),
                    "hosts": list(spec.hosts),
                    "methods": sorted(spec.methods),
                }
            for name, disabled in sorted(rules.disabled.items()):
                services[name] = {
                    "enabled": False,
                    "disabled_reason": disabled.reason,
                    "file": disabled.file,
                    "hosts": list(disabled.hosts),
                    "methods": [],
                }
            apps = {
                "enabled": sorted(rules.apps),
                "disabled": {name: why for name, why in sorted(rules.disabled_apps.items())},
            }
        access_log = gw.access_log
        document: dict[str, Any] = {
            "ready": ready,
            "not_ready_reason": reason or None,
            "degraded": self.degraded(),
            "started_at": rfc3339(gw.started),
            "uptime_s": round(time.time() - gw.started, 3),
            "pid": os.getpid(),
            "rules": {
                "loaded": compiled is not None,
                "version": rules.version if rules is not None else None,
                "directory": _option("gateway_rules"),
                "files": list(rules.files) if rules is not None else [],
                "last_reload_at": rfc3339(gw.last_reload_at),
                "last_reload_ok": not gw.last_reload_error,
                # Each entry is `file:line: message`, as `python -m addons check` prints it.
                "last_reload_error": list(gw.last_reload_error),
                "watch": self.watch.watch_status() if self.watch is not None else None,
                "remote": self.watch.remote_status() if self.watch is not None else None,
            },
            "services": services,
            "apps": apps,
            "health": gw.health.status() if gw.health is not None else {},
            "state": _store_status(gw.store),
            "shaping": gw.shaping.status() if gw.shaping is not None else None,
            "access_log": {
                "path": access_log.path if access_log is not None else None,
                "dropped": access_log.dropped if access_log is not None else 0,
            },
        }
        cleaned: dict[str, Any] = clean(document, redactor)
        return cleaned


def _store_status(store: object) -> dict[str, Any] | None:
    status: Callable[[], dict[str, Any]] | None = getattr(store, "status", None)
    return None if status is None else status()


def _option(name: str) -> Any:
    try:
        return getattr(ctx.options, name)
    except (AttributeError, KeyError):
        return None


def _shown(address: tuple[Any, ...]) -> tuple[str, int]:
    host, port = address[0], address[1]
    return (f"[{host}]" if ":" in host else host), port


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    text = json.dumps(body, ensure_ascii=False, indent=2, default=str) + "\n"
    return web.Response(text=text, status=status, content_type="application/json")
