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
from addons.chain.context import CallPipeline, GatewayContext  # noqa: E402
from addons.chain.forward import Forward  # noqa: E402
from addons.chain.identify import Identify  # noqa: E402
from addons.chain.quota import Quota  # noqa: E402
from addons.chain.route import Route  # noqa: E402
from addons.chain.rules import Rules  # noqa: E402
from addons.chain.shaping import Shaping  # noqa: E402
from addons.chain.state import State  # noqa: E402
from addons.chain.watch import Watch  # noqa: E402
from addons.chain.websocket import WebSockets  # noqa: E402
from addons.chain.webview import HideProxyAuth, WebView  # noqa: E402

gw = GatewayContext()
shaping = Shaping(gw)  # before the steps: Quota and Forward find it on gw
# The per-call steps, in the order a call meets them (each also keeps its own CONNECT/header hooks):
steps = (
    Identify(gw),      # which app: Proxy-Authorization (request or CONNECT), signature, address
    Route(gw),         # which service.method; allow lists; unmatched / unknown_hosts
    Quota(gw),         # every applicable quota admits the call, or 429 -2004
    Forward(gw),       # credentials, signature, timeouts, retries, failover, envelope
)
rules = Rules(gw)
watch = Watch(gw, rules)

addons = [
    HideProxyAuth(),   # mitmweb only: Proxy-Authorization kept out of the flow list until Identify reads it
    AccessLogger(gw),  # gateway_log; writes one line per call at its end (response/error hooks)
    State(gw),         # gateway_redis: memory or Redis state with the state_failure fallback
    rules,             # gateway_rules: load, validate, swap the rule set
    watch,             # reload on file change / SIGHUP / gateway.reload; gateway_rules_url feed
    Admin(gw, watch),  # gateway_admin: /metrics /healthz /readyz /status
    shaping,           # queued quotas, the provider's quota; drops a disconnected caller's waiting calls
    *steps,
    CallPipeline(gw, *steps),  # runs the steps above, in order, from one request hook
    WebSockets(gw),    # pass-through WebSockets keep only their newest message (bounded memory)
    WebView(gw),       # stored flows: comment, failure mark, request credentials masked; gateway_web_keep
]
