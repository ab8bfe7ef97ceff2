"""OpenTelemetry traces of gateway calls (SPEC 19), through the OpenTelemetry SDK and its OTLP/HTTP
exporter. No mitmproxy here: the chain's glue (`addons/chain/tracing.py`) builds a `Tracer` when
`gateway_otlp` is set and hands the call path three small objects:

    CallSpan      one per call (`gateway.call`, SERVER), continuing the caller's W3C traceparent
    AttemptSpan   one per upstream attempt (CLIENT), a child of the call; its traceparent goes to
                  the provider on that attempt's request
    Tracer        the SDK setup: a batch processor with a bounded queue, exported from its own thread

With `gateway_otlp` unset no Tracer exists and the call path only tests `gw.tracer is None`.

Export never touches the event loop: spans are queued (bounded: a full queue drops new spans rather
than grow, and counts them) and a worker thread posts them in batches. A collector that is down costs
the worker its time and a count of the spans it could not deliver, nothing else."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("gateway")

SERVICE_NAME = "egress-gateway"
TRACES_PATH = "/v1/traces"
_PROPAGATOR = TraceContextTextMapPropagator()


def traces_endpoint(base: str) -> str:
    """`http://collector:4318` -> `http://collector:4318/v1/traces` (a full .../v1/traces is kept)."""
    base = base.strip()
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"gateway_otlp must be an http:// or https:// URL (e.g. http://collector:4318), got {base!r}")
    base = base.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


class CountingExporter(SpanExporter):
    """The OTLP exporter, counting the spans of batches it could not deliver (a dead collector)."""

    def __init__(self, inner: SpanExporter, on_failed: Callable[[int], None] | None = None) -> None:
        self.inner = inner
        self.on_failed = on_failed
        self.failed_spans = 0
        self.exported_spans = 0  # delivered; exported + failed = every span the exporter was handed
        self._warned = False
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:  # the exporter should not raise; if it does, it is one more failure
            result = SpanExportResult.FAILURE
        with self._lock:
            if result is SpanExportResult.SUCCESS:
                self.exported_spans += len(spans)
                self._warned = False
                return result
            self.failed_spans += len(spans)
            warn, self._warned = not self._warned, True
        if warn:  # once per outage, not once per batch
            log.warning("gateway: trace export failed; %d span(s) dropped so far", self.failed_spans)
        if self.on_failed is not None:
            self.on_failed(len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class BoundedProcessor(SpanProcessor):
    """The SDK's batch processor behind a bound of its own: at most `max_queue` ended spans not yet
    through the exporter. Beyond that a new span is dropped and counted, on the event loop, without
    the SDK's own per-span "queue full" warning (which would log once per call while a collector
    is slow) and without evicting older spans."""

    def __init__(self, exporter: CountingExporter, max_queue: int, batch: int, delay_ms: int,
                 export_timeout_ms: int, on_dropped: Callable[[int], None] | None = None) -> None:
        self.exporter = exporter
        self.max_queue = max_queue
        self.on_dropped = on_dropped
        self.queued = 0
        self.dropped = 0
        # Room for a whole batch in flight beside the bound, so the inner queue is never the one to drop.
        self.inner = BatchSpanProcessor(exporter, max_queue_size=max_queue + batch, max_export_batch_size=batch,
                                        schedule_delay_millis=delay_ms, export_timeout_millis=export_timeout_ms)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        done = self.exporter.exported_spans + self.exporter.failed_spans
        if self.queued - done >= self.max_queue:
            self.dropped += 1
            if self.on_dropped is not None:
                self.on_dropped(1)
            return
        self.queued += 1
        self.inner.on_end(span)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class AttemptSpan:
    """One upstream attempt (CLIENT). `traceparent` names this span, for the provider's request."""

    __slots__ = ("_redact", "_span", "ended", "headers")

    def __init__(self, span: Span, redact: Callable[[str], str]) -> None:
        self._span = span
        self._redact = redact
        self.ended = False
        self.headers: dict[str, str] = {}
        _PROPAGATOR.inject(self.headers, context=trace.set_span_in_context(span))

    @property
    def traceparent(self) -> str:
        return self.headers.get("traceparent", "")

    def end(self, status: int | None, code: int | None, error: str = "") -> None:
        if self.ended:
            return
        self.ended = True
        span = self._span
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if code is not None:
            span.set_attribute("gateway.code", code)
        if error or (status is None) or (code not in (None, 0)):
            shown = self._redact(error)[:200] if error else None
            span.set_status(Status(StatusCode.ERROR, shown))
            if shown:
                span.set_attribute("error.type", shown)
        span.end()


class CallSpan:
    """One call (`gateway.call`, SERVER); attempts are its children."""

    __slots__ = ("_attempts", "_span", "_tracer", "trace_id", "traceparent")

    def __init__(self, tracer: trace.Tracer, span: Span) -> None:
        self._tracer = tracer
        self._span = span
        self._attempts: list[AttemptSpan] = []
        context = span.get_span_context()
        self.trace_id = trace.format_trace_id(context.trace_id)
        headers: dict[str, str] = {}
        _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
        self.traceparent = headers.get("traceparent", "")

    def attempt(self, number: int, http_method: str, url: str, host: str, target: str,
                redact: Callable[[str], str] = str) -> AttemptSpan:
        """`url` must already be redacted; `redact` is applied to the attempt's error text."""
        span = self._tracer.start_span(
            "gateway.attempt", context=trace.set_span_in_context(self._span), kind=SpanKind.CLIENT,
            attributes={"http.request.method": http_method, "url.full": url, "server.address": host,
                        "gateway.attempt": number, "gateway.target": target})
        attempt = AttemptSpan(span, redact)
        self._attempts.append(attempt)
        return attempt

    def end(self, *, app: str | None, service: str, method: str, code: int | None, status: int | None,
            attempts: int, cache: str | None = None, error: str = "") -> None:
        """`error` must already be redacted."""
        for attempt in self._attempts:  # cut off by the call's deadline: it ended without an answer
            attempt.end(None, None, "cut off by the call's deadline")
        span = self._span
        attributes: dict[str, Any] = {"gateway.service": service, "gateway.method": method,
                                      "gateway.attempt": attempts}
        if app is not None:
            attributes["gateway.app"] = app
        if code is not None:
            attributes["gateway.code"] = code
        if status is not None:
            attributes["http.response.status_code"] = status
        if cache is not None:
            attributes["gateway.cache"] = cache
        span.set_attributes(attributes)
        if code not in (None, 0):
            span.set_status(Status(StatusCode.ERROR, error or None))
        span.end()


class Tracer:
    """The SDK's pieces for one exporter endpoint. `shutdown()` flushes what is queued (bounded)."""

    def __init__(self, endpoint: str, *, max_queue: int = 2048, batch: int = 512, delay_ms: int = 1000,
                 export_timeout: float = 2.0, on_failed: Callable[[int], None] | None = None,
                 on_dropped: Callable[[int], None] | None = None, exporter: SpanExporter | None = None) -> None:
        self.endpoint = traces_endpoint(endpoint) if exporter is None else endpoint
        inner = exporter or OTLPSpanExporter(endpoint=self.endpoint, timeout=export_timeout)
        # CountingExporter says once per outage what failed; the exporter's own line per batch would repeat it.
        logging.getLogger("opentelemetry.exporter.otlp.proto.http").setLevel(logging.CRITICAL)
        self.exporter = CountingExporter(inner, on_failed)
        self.provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
        self.processor = BoundedProcessor(self.exporter, max_queue, batch, delay_ms, int(export_timeout * 1000),
                                          on_dropped)
        self.provider.add_span_processor(self.processor)
        self._tracer = self.provider.get_tracer("addons.tracing")

    def start_call(self, headers: MutableMapping[str, str] | Any, http_method: str, url: str,
                   host: str) -> CallSpan:
        """`headers`: the caller's (its traceparent/tracestate are continued); `url` already redacted."""
        carrier = {}
        traceparent = headers.get("traceparent")
        if traceparent:
            carrier["traceparent"] = traceparent
            tracestate = headers.get("tracestate")
            if tracestate:
                carrier["tracestate"] = tracestate
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        span = self._tracer.start_span(
            "gateway.call", context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": http_method, "url.full": url, "server.address": host})
        return CallSpan(self._tracer, span)

    def status(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "exported_spans": self.exporter.exported_spans,
                "failed_spans": self.exporter.failed_spans, "dropped_queue_full": self.processor.dropped,
                "queued": self.processor.queued - self.exporter.exported_spans - self.exporter.failed_spans}

    def shutdown(self) -> None:
        try:
            self.provider.shutdown()
        except Exception as exc:  # at exit: never let the collector's state fail a shutdown
            log.warning("gateway: trace exporter shutdown failed: %s", type(exc).__name__)
