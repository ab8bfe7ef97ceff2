"""Sends a routed call upstream itself (credentials, signature, timeouts, retries, failover) and
answers the caller with the envelope, or with the provider's own bytes when the call is raw."""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.net.http import status_codes, url
from multidict import CIMultiDict

from addons.call import Call
from addons.chain.context import GatewayContext, answer, fail
from addons.chain.echo import mask_echoed_secrets
from addons.envelope import SPLICED, ProviderAnswer
from addons.errors import Code, GatewayError
from addons.explicit import EXPLICIT_HOST, json_object, reshape
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


def _explicit_params(flow: http.HTTPFlow, base: OutboundRequest, consumed: frozenset[str]) -> None:
    """The explicit form: the method's HTTP method decides whether parameters go as query or body."""
    fields = json_object(base.body, flow.request.headers.get("content-type", ""))
    try:
        base.query, body, replaced = reshape(base.method, base.query, base.body, fields, consumed)
    except ValueError as exc:
        raise GatewayError(Code.CALLER_INVALID, f"{flow.request.path.split('?', 1)[0]}: {exc}") from None
    if replaced:
        base.body = body
        if not body:
            base.headers.popall("Content-Type", None)


class Forward:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw

    async def on_request(self, flow: http.HTTPFlow) -> None:
        call = self.gw.call(flow)
        route = call.route
        if route is None or self.gw.compiled is None:
            return
        runtime = self.gw.compiled.services[route.service]
        method = (route.method_spec.method if call.host == EXPLICIT_HOST and route.method_spec
                  and route.method_spec.method else flow.request.method)
        try:
            local = runtime.credential.local_answer(route.path, method)
            if local is not None:
                call.attempts = 0
                verdict = runtime.adapter.classify(ProviderAnswer(200, CIMultiDict(), local), call.rule)
                result = Result(verdict.code, verdict.message, verdict=verdict, status=200,
                                headers=CIMultiDict({"Content-Type": "application/json"}), raw_body=local,
                                data=verdict.result_data)
            else:
                base = outbound_from(flow, call.request_id, method, route.path, route.consumed)
                base.named_host = _named_authority(route.named_host, flow.request)
                if call.host == EXPLICIT_HOST:
                    _explicit_params(flow, base, route.consumed)
                on_attempt = None
                if call.span is not None:
                    from addons.chain.tracing import attempt_hook

                    on_attempt = attempt_hook(self.gw, call)
                result = await forward(runtime, base, call.rule, method, self.gw.http(), self.gw.metrics,
                                       on_attempt)
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
            self._raw(flow, call, result, method)
        else:
            answered = result.verdict
            # The provider's bytes stand for data only while data is still the body they encode.
            data_json = None
            if answered is not None and (result.data is SPLICED or answered.data is result.data):
                data_json = answered.data_json
            data = None if result.data is SPLICED else result.data
            answer(flow, call, result.code, result.message, data, data_json=data_json)
        if flow.response is not None:
            mask_echoed_secrets(flow.response, self.gw.redactor)

    def _raw(self, flow: http.HTTPFlow, call: Call, result: Result, method: str) -> None:
        """The provider's answer as it came (vendor SDKs parse it themselves); bytes stay encoded."""
        # aiohttp decodes header bytes as UTF-8 with surrogateescape: encoding back the same way gives
        # the provider's bytes exactly (latin-1 would fail on a UTF-8 value: the provider's doing).
        headers = http.Headers([(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                                for k, v in result.headers.items() if k.lower() not in HOP_BY_HOP])
        length = result.headers.get("content-length", "")
        if not (method == "HEAD" and not result.raw_body and length.isdigit()):
            # A HEAD answer has no body but keeps the provider's length (boto3's head_object reads it).
            length = str(len(result.raw_body))
        headers["Content-Length"] = length
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


def _named_authority(named_host: str, request: http.Request) -> str:
    """The Host a wildcard call carries to the provider: the caller's host, with its port unless that
    is the scheme's default (a bucket of an S3-compatible store on :9000 keeps its :9000)."""
    return url.hostport(request.scheme, named_host, request.port) if named_host else ""
