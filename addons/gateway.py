"""The gateway's addon chain:

    mitmdump -s addons/gateway.py --set gateway_rules=rules [--set gateway_redis=redis://...]

mitmproxy calls each event's hook on the addons below in list order, one after the other (an async
hook is awaited before the next addon's runs), so the list reads as the data path: set-up first,
then a connection's hooks, a call's `request` (one hook, `CallPipeline`, which runs the per-call
steps in order), and at the call's end the log line (`AccessLogger`, placed with the set-up so its
log is ready first), then the stored flow cleaned.

Every flow and connection hook of these addons fails closed (`chain.context.fail_closed`): if our
code raises in `requestheaders`, `request` or `http_connect`, the caller gets code -3002 and nothing
goes upstream; a failing connection hook refuses the connection, a failing socket hook closes the
socket; after the answer is decided the failure is only logged. mitmproxy itself would forward a
request whose hook raised, and skip the later addons' hooks for that event. Set-up hooks (load,
configure, running, done) are not wrapped: a bad option raises and mitmproxy refuses it."""

from __future__ import annotations

import sys
from pathlib import Path

# mitmproxy loads this file as a script, not as part of the package: make the package importable.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from addons.chain.accesslog import AccessLogger  # noqa: E402
from addons.chain.admin import Admin  # noqa: E402
from addons.chain.cache import Cache, CachedForward, CacheLookup  # noqa: E402
from addons.chain.connections import ClientConnections  # noqa: E402
from addons.chain.context import CallPipeline, GatewayContext  # noqa: E402
from addons.chain.dispatch import MemoDispatch  # noqa: E402
from addons.chain.egress import Egress  # noqa: E402
from addons.chain.forward import Forward  # noqa: E402
from addons.chain.heap import FrozenHeap  # noqa: E402
from addons.chain.identify import Identify  # noqa: E402
from addons.chain.lean import LeanAddons  # noqa: E402
from addons.chain.quota import Quota  # noqa: E402
from addons.chain.route import Route  # noqa: E402
from addons.chain.rules import Rules  # noqa: E402
from addons.chain.shaping import Shaping  # noqa: E402
from addons.chain.state import State  # noqa: E402
from addons.chain.tracing import Tracing  # noqa: E402
from addons.chain.watch import Watch  # noqa: E402
from addons.chain.websocket import WebSockets  # noqa: E402
from addons.chain.webview import HideProxyAuth, WebView  # noqa: E402

gw = GatewayContext()
cache = Cache(gw)  # the response cache: its lookup runs before Quota, its store around Forward
shaping = Shaping(gw)  # queued quotas and the provider's quota: the Quota step and Forward find it on gw
identify = Identify(gw)  # which app: Proxy-Authorization (request or CONNECT), signature, address
route = Route(gw)  # which service.method; allow lists; unmatched / unknown_hosts
rules = Rules(gw)
watch = Watch(gw, rules)

addons = [
    # -- set-up: options, state, rules, the admin listener (load / configure / running / done) --------
    LeanAddons(),      # gateway_lean: mitmproxy's default addons left idle here are removed at start
    MemoDispatch(),    # gateway_lean: each event's hooks looked up once per chain change, not per event
    # gateway_log: opened (stdout made JSON lines only) before the set-up below logs anything; its
    # response / error hooks write a call's line at the call's end, before WebView cleans the flow.
    AccessLogger(gw),
    State(gw),         # gateway_redis: memory or Redis state with the state_failure fallback
    cache,             # the response cache's store (memory, or Redis with gateway_redis)
    rules,             # gateway_rules: load, validate, swap the rule set
    watch,             # reload on file change / SIGHUP / gateway.reload; gateway_rules_url feed
    Admin(gw, watch),  # gateway_admin: /metrics /healthz /readyz /status, the status page at /
    Tracing(gw),       # gateway_otlp: OpenTelemetry traces over OTLP/HTTP (off when unset)
    shaping,           # queued quotas, the provider's quota; drops a disconnected caller's waiting calls
    FrozenHeap(gw),    # gateway_gc_freeze: long-lived objects kept out of full garbage collections
    # -- a connection and its request headers -------------------------------------------------------
    HideProxyAuth(gw),  # mitmweb only: Proxy-Authorization kept out of the flow list until `request`
    ClientConnections(gw),  # gateway.client_idle, gateway.header_timeout: idle and slow clients closed
    identify,          # http_connect: the app of a tunnel, from the CONNECT's Proxy-Authorization
    route,             # requestheaders: stream or buffer; responseheaders: pass-through answers
    Egress(gw),        # pass-through destinations: checked on the resolved address, every connect
    # -- the call: its one `request` hook runs the per-call steps, in this order -------------------
    CallPipeline(
        gw,
        identify,      # which app
        route,         # which service.method, or a pass-through host
        CacheLookup(gw, cache),  # a cached copy, or a call in flight to share (kept out of per: service quotas)
        Quota(gw),     # every applicable quota admits the call, or 429 -2004
        CachedForward(gw, cache, Forward(gw)),  # hits answered; credentials, signature, retries, failover, envelope
    ),
    WebSockets(gw),    # pass-through WebSockets keep only their newest message (bounded memory)
    # -- the call's end (response / error): AccessLogger's line (above), then the stored flow cleaned
    WebView(gw),       # stored flows: comment, failure mark, request credentials masked; gateway_web_keep
]
