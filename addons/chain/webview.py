"""What a stored flow shows (mitmweb's memory, or a `-w` flow file), SPEC 10:

- its comment reads `app -> service.method code=N attempts=N` (redacted), and a failed call
  (code != 0) is marked, so failures stand out in mitmweb's list;
- after the exchange, the flow's request keeps only what the caller sent minus its credentials:
  Proxy-Authorization (also on a CONNECT), and the value of every secret-named header, query
  parameter and form/JSON body field becomes `***`, as does any secret the gateway knows (those it
  injects, app secrets). The gateway sends the upstream request itself (aiohttp), so the credentials
  and signatures it injects never enter the flow in the first place;
- mitmweb keeps every flow in memory: only the newest `gateway_web_keep` flows the gateway
  finished are kept, older ones are removed from mitmweb's view (and so freed);
- mitmweb adds a flow to its list (and pushes it to open browsers) at `requestheaders`, before
  Identify has read and removed Proxy-Authorization in `request`. `HideProxyAuth`, first in the
  chain, takes the header off the flow for that moment and gives it back at the start of `request`.

"After the exchange" is the `response` / `error` hook: the request has gone upstream by then (the
gateway forwarded it in `request`, or mitmproxy did for a pass-through host), and mitmproxy's own
flow writer (`-w`) and mitmweb's store run after this addon, so they only ever see the cleaned
request. The response is left as the caller received it: changing it here would change the
answer itself, and the gateway's answers never hold an injected credential (envelope messages are
the gateway's own, redacted sentences; WeChat token calls get a placeholder)."""

from __future__ import annotations

import collections
import json
import logging
import weakref
from typing import Any

from mitmproxy import ctx, exceptions, http

from addons.chain.context import GatewayContext, fail_closed
from addons.redact import MASK, Redactor, is_secret_name

log = logging.getLogger("gateway")

FAILED_MARK = ":warning:"
MAX_SCRUBBED_BODY = 1024 * 1024  # larger request bodies are dropped from the stored flow, not parsed


class WebView:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        # The flows this addon finished, oldest first: the eviction order for mitmweb's store.
        self._finished: collections.deque[http.HTTPFlow] = collections.deque()
        self._storing = True  # until running() knows better: cleaning too much is the safe side

    def load(self, loader) -> None:
        loader.add_option("gateway_web_keep", int, 2000,
                          "mitmweb: keep only the newest N finished flows in memory (0: keep none).")

    def running(self) -> None:
        self._update_storing()

    def _update_storing(self) -> None:
        # Only a stored flow needs a comment and a cleaned request: mitmweb's view keeps flows, and
        # `-w` (save_stream_file) writes them. Plain mitmdump keeps nothing, so the work is skipped.
        self._storing = _view() is not None or bool(getattr(ctx.options, "save_stream_file", None))

    def configure(self, updated: set[str]) -> None:
        if "save_stream_file" in updated:
            self._update_storing()
        if "gateway_web_keep" in updated:
            if ctx.options.gateway_web_keep < 0:
                raise exceptions.OptionsError("gateway_web_keep must be 0 or more")
            self._trim()

    @fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        # Identify reads and removes it first; this is the last line of defence should an earlier
        # hook have failed before removing it, so a stored CONNECT never holds the app's secret.
        flow.request.headers.pop("proxy-authorization", None)

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    @fail_closed
    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        if not self._storing:
            return
        try:
            redactor = self.gw.redactor
            call = self.gw.calls.get(flow)
            if call is not None:
                code = call.code if call.code is not None else 0
                flow.comment = redactor.text(
                    f"{call.app or '_'} -> {call.service}.{call.method} code={code} attempts={call.attempts}")
                if code != 0:
                    flow.marked = FAILED_MARK
            scrub_request(flow.request, redactor)
        except Exception as exc:  # the answer is already decided; a stored flow must not break it
            log.error("gateway: could not clean the stored flow: %s", type(exc).__name__,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            # Better an empty request in the store than one that may still hold a credential.
            flow.request.headers.clear()
            flow.request.content = b""
        self._keep(flow)

    # -- bounded memory in mitmweb ------------------------------------------------------------------

    def _keep(self, flow: http.HTTPFlow) -> None:
        if self._view() is None:
            return  # mitmdump: no store of flows, nothing to bound
        if not self._finished or self._finished[-1] is not flow:
            self._finished.append(flow)
        self._trim()

    def _trim(self) -> None:
        view = self._view()
        if view is None:
            self._finished.clear()
            return
        keep = max(0, ctx.options.gateway_web_keep)
        still_live: list[http.HTTPFlow] = []
        while len(self._finished) > keep:
            old = self._finished.popleft()
            if view.get_by_id(old.id) is not old:
                continue  # already gone (deleted in the UI, or view.clear)
            if old.live:
                # Its answer is still being sent, and the view's remove() kills a live flow: later.
                still_live.append(old)
                continue
            view.remove([old])
        self._finished.extendleft(reversed(still_live))

    @staticmethod
    def _view() -> Any:
        return _view()


# Proxy-Authorization values HideProxyAuth holds back until the request hook, by flow.
_HELD: weakref.WeakKeyDictionary[http.HTTPFlow, list[str]] = weakref.WeakKeyDictionary()


def proxy_authorization(flow: http.HTTPFlow) -> str | None:
    """The request's Proxy-Authorization, also while HideProxyAuth holds it (request headers phase)."""
    held = _HELD.get(flow)
    return held[0] if held else flow.request.headers.get("proxy-authorization")


class HideProxyAuth:
    """Keeps Proxy-Authorization out of mitmweb's flow list (see the module docstring). Must come
    before Identify in the chain; does nothing without mitmweb (mitmdump stores no flows)."""

    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        self._held = _HELD
        self._active = False

    def running(self) -> None:
        self._active = _view() is not None

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self._active and "proxy-authorization" in flow.request.headers:
            self._held[flow] = flow.request.headers.get_all("proxy-authorization")
            del flow.request.headers["proxy-authorization"]

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        values = self._held.pop(flow, None)
        if values is not None:
            flow.request.headers.set_all("proxy-authorization", values)

    @fail_closed
    def error(self, flow: http.HTTPFlow) -> None:
        self._held.pop(flow, None)


def _view() -> Any:
    master = getattr(ctx, "master", None)
    return master.addons.get("view") if master is not None else None


def scrub_request(request: http.Request, redactor: Redactor) -> None:
    """The request as the caller sent it, minus credentials (see the module docstring)."""
    headers = request.headers
    for name in ("proxy-authorization", "x-gateway-signature"):
        headers.pop(name, None)
    for name in {k.lower() for k in headers}:
        values = headers.get_all(name)
        if is_secret_name(name):
            cleaned = [MASK] * len(values)
        else:
            cleaned = [redactor.value(v) for v in values]
        if cleaned != values:
            headers.set_all(name, cleaned)
    if request.query:
        fields = request.query.fields
        cleaned_fields = tuple((k, MASK if is_secret_name(k) else redactor.value(v)) for k, v in fields)
        if cleaned_fields != fields:
            request.query = cleaned_fields
    _scrub_body(request, redactor)


def _scrub_body(request: http.Request, redactor: Redactor) -> None:
    raw = request.raw_content
    if not raw:
        return
    if len(raw) > MAX_SCRUBBED_BODY:
        request.content = b""
        request.headers["X-Gateway-Stored"] = f"body of {len(raw)} bytes not stored"
        return
    try:
        body = request.get_content(strict=False) or b""
    except ValueError:
        body = raw
    ctype = request.headers.get("content-type", "").lower()
    if "json" in ctype:
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            cleaned_text = redactor.text(body.decode("utf-8", "replace"))
        else:
            cleaned = redactor.json_value(parsed)
            if cleaned == parsed:
                return
            cleaned_text = json.dumps(cleaned, ensure_ascii=False)
    elif "x-www-form-urlencoded" in ctype:
        cleaned_text = redactor.body(ctype, body)
    elif ctype.startswith(("text/", "application/xml")) or "xml" in ctype:
        cleaned_text = redactor.text(body.decode("utf-8", "replace"))
    else:
        # Binary or unknown: rewriting it could only garble it. Kept as is unless something in it
        # needs masking (a known secret, a card or phone number), then it is not stored at all.
        if redactor.value(body.decode("latin-1")) != body.decode("latin-1"):
            request.content = b""
            request.headers["X-Gateway-Stored"] = "body not stored: it held data that is redacted"
        return
    if cleaned_text.encode() != body:
        request.content = cleaned_text.encode()
