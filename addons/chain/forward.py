"""Sends a routed call upstream itself (credentials, signature, timeouts, retries, failover) and
answers the caller with the envelope, or with the provider's own bytes when the call is raw."""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.net.http import status_codes
from multidict import CIMultiDict

from addons.call import Call
from addons.chain.context import GatewayContext, answer, fail
from addons.envelope import ProviderAnswer
from addons.errors import Code, GatewayError
from addons.outbound import OutboundRequest
from addons.upstream.forwarder import BINARY_BODY, HOP_BY_HOP, Result, forward

# Caller headers that are the gateway's business, not the provider's.
_DROP = HOP_BY_HOP | {"x-request-id", "x-gateway-envelope", "accept-encoding"}


def outbound_from(flow: http.HTTPFlow, request_id: str, method: str, path: str,
                  consumed: frozenset[str]) -> OutboundRequest:
    request = flow.request
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.fields:
        key = name.decode("latin-1")
        lower = key.lower()
        if lower in _DROP or lower.startswith("proxy-") or lower.startswith("x-gateway-"):
            continue
        headers.add(key, value.decode("latin-1"))
    headers["X-Request-ID"] = request_id
    # The envelope reads the body, so ask for encodings it can decode (mitmproxy decodes all of these).
    headers["Accept-Encoding"] = "gzip, deflate, br, zstd"
    query = [(k, v) for k, v in request.query.items(multi=True) if k not in consumed]
    return OutboundRequest(method=method, scheme="", host="", port=0, path=path, query=query, headers=headers,
                           body=request.raw_content or b"")


class Forward:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw

    async def on_request(self, flow: http.HTTPFlow) -> None:
        call = self.gw.call(flow)
        route = call.route
        if route is None or self.gw.compiled is None:
            return
        runtime = self.gw.compiled.services[route.service]
        method = (route.method_spec.method if call.host == "gateway.local" and route.method_spec
                  and route.method_spec.method else flow.request.method)
        try:
            local = runtime.credential.local_answer(route.path, method)
            if local is not None:
                call.attempts = 0
                verdict = runtime.adapter.classify(ProviderAnswer(200, CIMultiDict(), local), call.rule)
                result = Result(verdict.code, verdict.message, verdict=verdict, status=200,
                                headers=CIMultiDict({"Content-Type": "application/json"}), raw_body=local,
                                data=verdict.data)
            else:
                base = outbound_from(flow, call.request_id, method, route.path, route.consumed)
                result = await forward(runtime, base, call.rule, method, self.gw.http(), self.gw.metrics)
        except GatewayError as error:
            fail(flow, call, error, call.rule)
            return
        if local is None and self.gw.shaping is not None:
            learned = self.gw.shaping.learn(runtime, result)  # the provider's own quota, from its answer
            if learned is not None:
                await learned  # the fleet knows before this caller can call again
        call.attempts, call.target, call.upstream_ms = result.attempts, result.target, result.upstream_ms
        call.error = result.error
        if local is None:  # a fallback answer made no attempt: "0" says so
            call.headers["X-Gateway-Attempts"] = str(result.attempts)
        # An answer the gateway could not vouch for (-1004: a bad response signature, an undecodable
        # body) is never handed on as it came, not even to a raw caller: a forged answer must not
        # reach an SDK that may not check it again.
        if result.verdict is not None and result.status is not None and result.code != Code.UPSTREAM_UNREADABLE and (
                call.raw or result.data is BINARY_BODY):
            # A successful binary answer (WeChat's QR codes, media downloads) cannot live in a JSON
            # envelope: it goes to the caller as it came, with X-Request-ID set.
            self._raw(flow, call, result)
        else:
            answer(flow, call, result.code, result.message, result.data)

    def _raw(self, flow: http.HTTPFlow, call: Call, result: Result) -> None:
        """The provider's answer as it came (vendor SDKs parse it themselves); bytes stay encoded."""
        headers = http.Headers([(k.encode("latin-1"), v.encode("latin-1")) for k, v in result.headers.items()
                                if k.lower() not in HOP_BY_HOP])
        headers["Content-Length"] = str(len(result.raw_body))
        status = result.status or 502
        reason = status_codes.RESPONSES.get(status, "").encode()
        response = http.Response(b"HTTP/1.1", status, reason, headers, result.raw_body, None,
                                 flow.request.timestamp_start, None)
        response.headers["X-Request-ID"] = call.request_id
        for name, value in call.headers.items():
            response.headers[name] = value
        if result.code != 0:
            response.headers["X-Gateway-Code"] = str(result.code)
        call.code, call.status, call.message = result.code, response.status_code, result.message
        flow.response = response
