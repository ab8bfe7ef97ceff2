"""What the addons of the chain share: the compiled rules, the state store, metrics, the access log,
the upstream HTTP session, and each flow's Call. Plus the two things every hook needs: answering a
call with an envelope, and failing closed when our own code raises."""

from __future__ import annotations

import functools
import inspect
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from mitmproxy import connection, http
from mitmproxy.net.http import status_codes

from addons.call import Call, request_id_from
from addons.envelope import render
from addons.errors import Code, GatewayError, http_status
from addons.metrics import Metrics
from addons.recent import QuotaUse, RecentFailures
from addons.redact import Redactor

if TYPE_CHECKING:
    from addons.accesslog import AccessLog
    from addons.chain.cache import Cache
    from addons.chain.egress import Egress
    from addons.chain.shaping import Shaping
    from addons.runtime import Compiled
    from addons.state.base import StateStore
    from addons.tracing import Tracer
    from addons.upstream.health import HealthRegistry

log = logging.getLogger("gateway")

_DEFAULT_REDACTOR = Redactor()
JSON = "application/json; charset=utf-8"
JSON_BYTES = JSON.encode()
HTTPFlow = http.HTTPFlow


class GatewayContext:
    def __init__(self) -> None:
        self.compiled: Compiled | None = None
        self.store: StateStore | None = None
        self.metrics = Metrics()
        self.access_log: AccessLog | None = None
        self.session: aiohttp.ClientSession | None = None
        self.health: HealthRegistry | None = None
        self.cache: Cache | None = None  # the response cache (SPEC 13), set by the Cache addon
        self.egress: Egress | None = None  # checks pass-through destinations (SPEC 12)
        self.started = time.time()
        self.last_reload_error: list[str] = []
        self.last_reload_at: float | None = None
        # The Call of each live flow; weak, so a flow that mitmproxy drops takes its Call with it.
        self.calls: weakref.WeakKeyDictionary[http.HTTPFlow, Call] = weakref.WeakKeyDictionary()
        # Apps identified on the CONNECT of a tunnel: every request inside it is theirs.
        self.tunnels: weakref.WeakKeyDictionary[connection.Client, str] = weakref.WeakKeyDictionary()
        self.on_rules_changed: list[Callable[[Compiled], None]] = []
        # Queued quotas and the provider's learned quota (addons/chain/shaping.py), when loaded.
        self.shaping: Shaping | None = None
        # Writes a call's log line and metrics; set by the AccessLogger addon.
        self.finish: Callable[[http.HTTPFlow], None] = lambda flow: None
        # Set by the Tracing addon while `gateway_otlp` is set; None costs the call path one test.
        self.tracer: Tracer | None = None
        # For the status page: the latest failed calls, and each quota counter as last seen.
        self.recent_failures = RecentFailures()
        self.quota_use = QuotaUse()

    @property
    def redactor(self) -> Redactor:
        """The rule set's redactor; before any rules load, one with the built-in rules only."""
        return self.compiled.redactor if self.compiled is not None else _DEFAULT_REDACTOR

    def http(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            from addons.upstream.forwarder import make_session

            self.session = make_session()
        return self.session

    def call(self, flow: HTTPFlow) -> Call:  # (`http` here would name the method above)
        call = self.calls.get(flow)
        if call is None:
            request = flow.request
            # pretty_host parses the Host header each time it is read: once per call is enough.
            call = Call(request_id_from(request.headers.get("x-request-id")), request.method, request.url,
                        request.pretty_host.lower())  # hosts are case-insensitive (GATEWAY.LOCAL)
            self.calls[flow] = call
        return call


def answer(flow: http.HTTPFlow, call: Call, code: int, message: str, data: Any = None,
           headers: dict[str, str] | None = None, status: int | None = None,
           data_json: bytes | None = None) -> None:
    """End the call here with an envelope the gateway makes itself (never raw, whatever the rule).
    `data_json`: `data` as the provider's own JSON text, spliced in unchanged."""
    call.code = code
    call.message = message
    body = render(code, message, data, call.request_id, data_json)
    status = status or http_status(code)
    # Built in one go (Response.make re-encodes and sets headers one by one: twice the cost).
    fields = [(b"Content-Type", JSON_BYTES), (b"Content-Length", str(len(body)).encode()),
              (b"X-Request-ID", call.request_id.encode())]
    if code != 0:
        fields.append((b"X-Gateway-Code", str(code).encode()))
    for name, value in {**call.headers, **(headers or {})}.items():
        fields.append((name.encode("latin-1"), value.encode("latin-1")))
    now = time.time()
    flow.response = http.Response(b"HTTP/1.1", status, status_codes.RESPONSES.get(status, "").encode(),
                                  http.Headers(fields), body, None, now, now)
    call.status = status


def fail(flow: http.HTTPFlow, call: Call, error: GatewayError, rule: str | None = None) -> None:
    prefixed = rule is None or error.message.startswith((rule, rule.split(".", 1)[0] + ":"))
    message = error.message if prefixed else f"{rule}: {error.message}"
    if error.detail:
        call.error = error.detail
    answer(flow, call, error.code, message, headers=error.headers)


def internal_error(gw: GatewayContext, flow: http.HTTPFlow, where: str, exc: Exception) -> None:
    """Our own code raised: answer -3002, never let the call through (mitmproxy would forward it)."""
    call = gw.call(flow)
    # The exception text may quote request data; only its type and location go to the log.
    log.error("internal error in %s for request %s: %s", where, call.request_id, type(exc).__name__,
              exc_info=log.isEnabledFor(logging.DEBUG))
    call.error = f"internal error ({type(exc).__name__})"
    answer(flow, call, Code.GATEWAY_INTERNAL, "gateway internal error")


# Hooks whose event goes on to the provider or opens something unless the hook stops it: a
# raising one answers -3002 (`request` phases) or refuses the connection (connection phases).
_ANSWERED_HOOKS = frozenset({"requestheaders", "request", "http_connect"})
# A live socket whose hook failed is closed: its traffic would otherwise flow unchecked.
_KILLED_HOOKS = frozenset({"websocket_start", "websocket_message", "tcp_start", "tcp_message"})


def close_on_error(gw: GatewayContext, where: str, hook: str, subject: Any, exc: Exception) -> None:
    """What a hook that raised leaves behind: never the event going on unchecked. Request phases get
    -3002 and nothing goes upstream; a client or server connection is refused; a socket is killed.
    After the answer is decided (`responseheaders`, `response`, `error`, `*_end`...) it stands: the
    failure is logged, and the hooks after this one still run (the exception does not escape)."""
    if hook in _ANSWERED_HOOKS and isinstance(subject, http.HTTPFlow):
        internal_error(gw, subject, where, exc)
        if hook == "http_connect":
            gw.finish(subject)  # a refused CONNECT gets no response hook: its log line is written now
        return
    log.error("internal error in %s: %s", where, type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
    if hook in _KILLED_HOOKS and getattr(subject, "killable", False):
        subject.kill()
    elif hook == "client_connected" and isinstance(subject, connection.Client):
        subject.error = "gateway internal error"  # mitmproxy closes a client connection with an error
    elif hook == "server_connect":
        subject.server.error = "gateway internal error"  # the connection is not opened


def fail_closed[F: Callable[..., Any]](hook: F) -> F:
    """An exception in a hook would let mitmproxy carry on unchecked (forward the request, open the
    connection) and skip the hooks of every later addon of the script for that event: it ends here
    instead, closed (`close_on_error`). For a hook of one argument, sync or async; the addon has `gw`."""
    name = hook.__name__
    if inspect.iscoroutinefunction(hook):

        @functools.wraps(hook)
        async def guarded_async(self: Any, subject: Any) -> None:
            try:
                await hook(self, subject)
            except Exception as exc:
                close_on_error(self.gw, f"{type(self).__name__}.{name}", name, subject, exc)

        guarded_async.fails_closed = True  # type: ignore[attr-defined]
        return guarded_async  # type: ignore[return-value]

    @functools.wraps(hook)
    def guarded(self: Any, subject: Any) -> None:
        try:
            hook(self, subject)
        except Exception as exc:
            close_on_error(self.gw, f"{type(self).__name__}.{name}", name, subject, exc)

    guarded.fails_closed = True  # type: ignore[attr-defined]
    return guarded  # type: ignore[return-value]


class Step(Protocol):
    """One concern of the per-call path. `on_request` returns an awaitable only when it must wait
    (a Redis round trip, the upstream call), so a call that needs no I/O costs no task switch."""

    gw: GatewayContext

    def on_request(self, flow: http.HTTPFlow) -> Awaitable[None] | None: ...


class CallPipeline:
    """The one dispatcher of a call's `request` work: runs the per-call steps, in order, from ONE
    mitmproxy `request` hook. The steps are not addons for `request` themselves; the two with other
    hooks (Identify: CONNECT, Route: request and response headers) are addons for those alone.

    mitmproxy 12 runs one event's hooks in one task, each addon's awaited in turn, so steps as addons
    would cost no extra tasks, but they would each need to check for an answer an earlier one gave,
    and each would be one more addon every event of every flow is dispatched to. Here a step that
    answers the call (sets `flow.response`) ends the pipeline, one that needs no I/O returns None
    and costs no coroutine, and a step that raises answers -3002 (`internal_error`)."""

    def __init__(self, gw: GatewayContext, *steps: Step) -> None:
        self.gw = gw
        self.steps = steps

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        if self.gw.tracer is not None:
            await self._traced(flow)
            return
        await self._run(flow)

    async def _traced(self, flow: http.HTTPFlow) -> None:
        from addons.chain import tracing

        call = self.gw.call(flow)
        try:
            tracing.start_call(self.gw, flow, call)
        except Exception as exc:  # tracing must never fail a call
            log.warning("gateway: trace span not started: %s", type(exc).__name__)
        await self._run(flow)
        if call.span is not None and call.passthrough and flow.response is None:
            tracing.passthrough(call, flow)

    async def _run(self, flow: http.HTTPFlow) -> None:
        for step in self.steps:
            if flow.response is not None:
                return
            try:
                pending = step.on_request(flow)
                if pending is not None:
                    await pending
            except Exception as exc:
                internal_error(self.gw, flow, f"{type(step).__name__}.on_request", exc)
                return
