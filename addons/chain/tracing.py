"""OpenTelemetry tracing glue (SPEC 19): the `gateway_otlp` option, and the three points of the
call path that touch a span (start in the pipeline, one per attempt in the forwarder, end with the
access-log line). With the option unset `gw.tracer` stays None and none of this runs."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mitmproxy import ctx, exceptions, http
from prometheus_client import Counter

from addons.chain.context import GatewayContext

if TYPE_CHECKING:
    from addons.call import Call
    from addons.outbound import OutboundRequest
    from addons.tracing import AttemptSpan, CallSpan

log = logging.getLogger("gateway")


class Tracing:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        self.endpoint = ""
        self._dropped: Counter | None = None

    def load(self, loader) -> None:
        loader.add_option("gateway_otlp", str, "",
                          "OTLP/HTTP collector for traces, e.g. http://collector:4318; empty: no tracing.")

    def configure(self, updated: set[str]) -> None:
        if "gateway_otlp" not in updated:
            return
        endpoint = ctx.options.gateway_otlp.strip()
        if endpoint == self.endpoint:
            return
        tracer = None
        if endpoint:
            # The SDK is imported only when tracing is on: off, the process does not even load it.
            from addons.tracing import Tracer, traces_endpoint

            try:
                traces_endpoint(endpoint)
            except ValueError as exc:
                raise exceptions.OptionsError(str(exc)) from None
            if self._dropped is None:
                # Both reasons exist at 0 from the start, so an alert on increase(...) works at once.
                self._dropped = Counter("gateway_trace_spans_dropped_total",
                                        "Spans not delivered to the collector: export_failed (collector down or "
                                        "refusing) or queue_full (export slower than calls).", ["reason"],
                                        registry=self.gw.metrics.registry)
                for reason in ("export_failed", "queue_full"):
                    self._dropped.labels(reason)
            dropped = self._dropped
            tracer = Tracer(endpoint, on_failed=dropped.labels("export_failed").inc,
                            on_dropped=dropped.labels("queue_full").inc)
        old, self.gw.tracer, self.endpoint = self.gw.tracer, tracer, endpoint
        if old is not None:
            old.shutdown()
        if tracer is not None:
            log.info("gateway: traces go to %s (OTLP/HTTP)", tracer.endpoint)

    def done(self) -> None:
        tracer, self.gw.tracer = self.gw.tracer, None
        if tracer is not None:
            tracer.shutdown()


def start_call(gw: GatewayContext, flow: http.HTTPFlow, call: Call) -> None:
    """The call's span, continuing the caller's traceparent; its trace id goes into the log line."""
    assert gw.tracer is not None
    request = flow.request
    span = gw.tracer.start_call(request.headers, call.http_method, gw.redactor.url(call.url), call.host)
    call.span, call.trace_id = span, span.trace_id


def attempt_hook(gw: GatewayContext, call: Call):
    """The forwarder's per-attempt callback: a child span, and its traceparent on the request (set
    before credentials and signatures, so a signer that signs every header signs this one too)."""
    span: CallSpan = call.span
    redactor = gw.redactor

    def on_attempt(req: OutboundRequest, target: str, number: int) -> AttemptSpan:
        attempt = span.attempt(number, req.method, redactor.url(req.url), req.host, target, redactor.text)
        req.headers["traceparent"] = attempt.traceparent
        tracestate = attempt.headers.get("tracestate")
        if tracestate:
            req.headers["tracestate"] = tracestate
        else:
            req.headers.popall("tracestate", None)
        return attempt

    return on_attempt


def passthrough(call: Call, flow: http.HTTPFlow) -> None:
    """A call forwarded natively (a host no service owns) has no attempt span: the provider gets
    the call's own span as its parent."""
    span: CallSpan = call.span
    flow.request.headers["traceparent"] = span.traceparent


def end_call(gw: GatewayContext, call: Call) -> None:
    span: CallSpan = call.span
    call.span = None
    error = call.message or call.error
    # The response cache's verdict (hit, miss, stale, bypass), where the call carries one.
    cache = getattr(call, "cache", None)
    cache = getattr(cache, "result", cache)
    span.end(app=call.app, service=call.service, method=call.method, code=call.code, status=call.status,
             attempts=call.attempts, cache=cache if isinstance(cache, str) else None,
             error=gw.redactor.text(error) if error else "")
