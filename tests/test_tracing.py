"""The tracing package's pure parts (addons/tracing): the SDK setup against an in-memory or a
blocking exporter. Span links and attributes, the traceparent given to the provider, the bound on
spans waiting for export, and the count of what a failing collector lost."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from addons.tracing import Tracer, traces_endpoint

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_endpoint_gets_the_traces_path_once_and_bad_urls_are_refused() -> None:
    assert traces_endpoint("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_endpoint("http://c:4318/") == "http://c:4318/v1/traces"
    assert traces_endpoint("https://c/otlp/v1/traces") == "https://c/otlp/v1/traces"
    with pytest.raises(ValueError, match="http:// or https://"):
        traces_endpoint("c:4318")


def test_call_and_attempt_spans() -> None:
    memory = InMemorySpanExporter()
    tracer = Tracer("memory", exporter=memory, delay_ms=10)
    try:
        call = tracer.start_call({"traceparent": PARENT, "tracestate": "v=1"}, "GET", "http://h/x?token=***", "h")
        first = call.attempt(1, "GET", "http://127.0.0.1:1/x", "127.0.0.1", "primary", redact=lambda s: "R")
        assert first.traceparent.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        assert first.headers["tracestate"] == "v=1"
        first.end(503, -1003, "secret detail")
        second = call.attempt(2, "GET", "http://127.0.0.1:2/x", "127.0.0.1", "backup")
        # The second is never ended by the forwarder (its deadline cut it off): the call ends it.
        call.end(app="a", service="s", method="m", code=0, status=200, attempts=2, cache="miss")
        assert tracer.provider.force_flush(5000)
        spans = {s.name + str(s.attributes.get("gateway.attempt")): s for s in memory.get_finished_spans()}
        root = spans["gateway.call2"]
        assert root.kind is SpanKind.SERVER and root.parent is not None
        assert format(root.parent.span_id, "016x") == "00f067aa0ba902b7"
        assert root.attributes["gateway.cache"] == "miss" and root.attributes["gateway.code"] == 0
        a1, a2 = spans["gateway.attempt1"], spans["gateway.attempt2"]
        assert a1.kind is SpanKind.CLIENT and a1.parent.span_id == root.context.span_id
        assert a1.status.status_code is StatusCode.ERROR and a1.status.description == "R"  # redacted
        assert first.traceparent.split("-")[2] == format(a1.context.span_id, "016x")
        assert a2.status.status_code is StatusCode.ERROR and a2.attributes["gateway.target"] == "backup"
        assert second.ended
    finally:
        tracer.shutdown()


class BlockingExporter(SpanExporter):
    def __init__(self, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        self.release = threading.Event()
        self.result = result
        self.got = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(10)
        self.got += len(spans)
        return self.result

    def shutdown(self) -> None:
        self.release.set()


def test_spans_waiting_for_export_are_bounded_and_drops_counted(caplog: pytest.LogCaptureFixture) -> None:
    blocking = BlockingExporter()
    dropped: list[int] = []
    tracer = Tracer("blocking", exporter=blocking, max_queue=5, batch=2, delay_ms=10, on_dropped=dropped.append)
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(50):
                tracer.start_call({}, "GET", "http://h/", "h").end(app=None, service="s", method="m", code=0,
                                                                     status=200, attempts=1)
        assert tracer.processor.dropped == 45 and sum(dropped) == 45
        assert not [r for r in caplog.records if "Queue full" in r.getMessage()]  # no warning per span
        blocking.release.set()
        assert tracer.provider.force_flush(5000)
        assert blocking.got == 5
        # Room again once the exporter caught up.
        tracer.start_call({}, "GET", "http://h/", "h").end(app=None, service="s", method="m", code=0, status=200,
                                                           attempts=1)
        assert tracer.provider.force_flush(5000) and blocking.got == 6 and tracer.processor.dropped == 45
    finally:
        blocking.release.set()
        tracer.shutdown()


def test_a_failing_collector_is_counted() -> None:
    failing = BlockingExporter(SpanExportResult.FAILURE)
    failing.release.set()
    failed: list[int] = []
    tracer = Tracer("failing", exporter=failing, delay_ms=10, on_failed=failed.append)
    try:
        for _ in range(3):
            tracer.start_call({}, "GET", "http://h/", "h").end(app=None, service="s", method="m", code=-1003,
                                                                 status=503, attempts=1)
        tracer.provider.force_flush(5000)
        assert sum(failed) == 3 and tracer.status()["failed_spans"] == 3
    finally:
        tracer.shutdown()
