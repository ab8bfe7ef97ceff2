"""The gateway's addon chain, in the order every call meets it:

    mitmdump -s addons/gateway.py --set gateway_rules=rules [--set gateway_redis=redis://...]

Each hook of each addon fails closed: if our code raises, the caller gets code -3002 and nothing
goes upstream (mitmproxy itself would forward a request whose hook raised)."""

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
from addons.chain.egress import Egress  # noqa: E402
from addons.chain.forward import Forward  # noqa: E402
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
shaping = Shaping(gw)  # before the steps: Quota and Forward find it on gw
# The per-call steps, in the order a call meets them (each also keeps its own CONNECT/header hooks):
steps = (
    Identify(gw),      # which app: Proxy-Authorization (request or CONNECT), signature, address
    Route(gw),         # which service.method; allow lists; unmatched / unknown_hosts
    CacheLookup(gw, cache),  # a cached copy, or a call in flight to share (kept out of per: service quotas)
    Quota(gw),         # every applicable quota admits the call, or 429 -2004
    CachedForward(gw, cache, Forward(gw)),  # hits answered; credentials, signature, retries, failover, envelope
)
rules = Rules(gw)
watch = Watch(gw, rules)

addons = [
    LeanAddons(),      # gateway_lean: mitmproxy's default addons left idle here are removed at start
    HideProxyAuth(),   # mitmweb only: Proxy-Authorization kept out of the flow list until Identify reads it
    AccessLogger(gw),  # gateway_log; writes one line per call at its end (response/error hooks)
    State(gw),         # gateway_redis: memory or Redis state with the state_failure fallback
    cache,             # the response cache's store (memory, or Redis with gateway_redis)
    rules,             # gateway_rules: load, validate, swap the rule set
    watch,             # reload on file change / SIGHUP / gateway.reload; gateway_rules_url feed
    Admin(gw, watch),  # gateway_admin: /metrics /healthz /readyz /status, the status page at /
    ClientConnections(gw),  # gateway.client_idle, gateway.header_timeout: idle and slow clients closed
    Tracing(gw),       # gateway_otlp: OpenTelemetry traces over OTLP/HTTP (off when unset)
    shaping,           # queued quotas, the provider's quota; drops a disconnected caller's waiting calls
    *steps,
    Egress(gw),        # pass-through destinations: checked on the resolved address, every connect
    CallPipeline(gw, *steps),  # runs the steps above, in order, from one request hook
    WebSockets(gw),    # pass-through WebSockets keep only their newest message (bounded memory)
    WebView(gw),       # stored flows: comment, failure mark, request credentials masked; gateway_web_keep
]
