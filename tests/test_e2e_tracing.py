"""OpenTelemetry traces (SPEC 19) from a real gateway to an OTLP/HTTP receiver on 127.0.0.1 that
decodes the protobuf payloads with opentelemetry-proto: one SERVER span per call, one CLIENT child
per attempt, the caller's traceparent continued, the provider seeing the attempt's span; a dead
collector costs nothing but a counter; tracing off loads no SDK at all."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.conftest import ROOT, wait_until
from tests.fakes import FakeProvider, Reply, Seen, refused_url
from tests.harness import Gateway, write_rules

APP, APP_SECRET = "order-service", "s3cret-order-trace-77aa"
INJECTED = "injected-provider-key-trace-5c1d"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"


class Collector:
    """An OTLP/HTTP trace receiver: POST /v1/traces, protobuf, decoded into a flat list of spans."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Span]] = []  # (resource attributes, span)
        self.posts = 0
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                with collector.lock:
                    collector.posts += 1
                    for resource_spans in request.resource_spans:
                        resource = attributes(resource_spans.resource.attributes)
                        for scope_spans in resource_spans.scope_spans:
                            collector.spans.extend((resource, span) for span in scope_spans.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def trace(self, trace_id: str, count: int, timeout: float = 15) -> list[Span]:
        def found() -> list[Span] | None:
            with self.lock:
                spans = [s for _, s in self.spans if s.trace_id.hex() == trace_id]
            return spans if len(spans) >= count else None

        return wait_until(found, timeout, what=f"{count} spans of trace {trace_id}")  # type: ignore[return-value]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def value_of(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in kvs}


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def rules(tmp_path: Path, fake: FakeProvider, unknown_hosts: str = "deny") -> Path:
    return write_rules(tmp_path / "rules", {
        "demo.yaml": f"""
            service: demo
            hosts: [api.demo.test]
            upstream: {{url: "{fake.url}", timeout: 2s}}
            credentials: {{type: static, header: X-Api-Key, value: "${{DEMO_KEY}}"}}
            retry: {{attempts: 2, backoff: 10ms, max_backoff: 10ms, on: [503]}}
            methods:
              flaky: {{method: GET, path: /flaky}}
              hello: {{method: GET, path: /hello}}
        """,
        "apps.yaml": f"""
            apps:
              {APP}: {{secret: {APP_SECRET}}}
            gateway: {{require_app: true, unknown_hosts: {unknown_hosts}, egress: {{allow_cidrs: [127.0.0.0/8]}}}}
        """,
    })


def flaky_then_ok(fake: FakeProvider) -> None:
    count = {"n": 0}

    def handler(_seen: Seen) -> Reply:
        count["n"] += 1
        return Reply(503, {"error": "busy"}) if count["n"] == 1 else Reply(200, {"ok": True})

    fake.on("GET", "/flaky", handler)
    fake.on("GET", "/hello", Reply(200, {"hello": "world"}))


def test_call_and_attempt_spans_continue_the_callers_trace(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                                          collector: Collector, gateways: list[Gateway]) -> None:
    flaky_then_ok(fake)
    gw = Gateway(rules(tmp_path, fake, unknown_hosts="allow"), confdir, env={"DEMO_KEY": INJECTED},
                 args=["--set", f"gateway_otlp={collector.url}"])
    gateways.append(gw.start())
    answer = requests.get("http://api.demo.test/flaky?access_token=caller-token-abc&q=1",
                          proxies=gw.proxies(APP, APP_SECRET), timeout=10,
                          headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "vendor=x"})
    assert answer.json()["code"] == 0, answer.text
    line = gw.log_for(answer.headers["X-Request-ID"])
    assert line["trace_id"] == CALLER_TRACE and line["attempts"] == 2

    spans = collector.trace(CALLER_TRACE, 3)
    calls = [s for s in spans if s.name == "gateway.call"]
    attempts = sorted((s for s in spans if s.kind == Span.SPAN_KIND_CLIENT), key=lambda s: s.start_time_unix_nano)
    assert len(calls) == 1 and len(attempts) == 2
    call = calls[0]
    assert call.kind == Span.SPAN_KIND_SERVER
    assert call.parent_span_id.hex() == CALLER_SPAN  # the caller's span is the parent
    attrs = attributes(call.attributes)
    assert attrs["gateway.app"] == APP and attrs["gateway.service"] == "demo" and attrs["gateway.method"] == "flaky"
    assert attrs["gateway.code"] == 0 and attrs["http.response.status_code"] == 200
    assert attrs["http.request.method"] == "GET" and attrs["server.address"] == "api.demo.test"
    assert "caller-token-abc" not in attrs["url.full"] and "q=1" in attrs["url.full"]
    for number, (attempt, status) in enumerate(zip(attempts, (503, 200), strict=True), 1):
        a = attributes(attempt.attributes)
        assert attempt.parent_span_id == call.span_id
        assert a["gateway.attempt"] == number and a["http.response.status_code"] == status
        assert a["server.address"] == "127.0.0.1"
    assert attempts[0].status.code == attempts[0].status.STATUS_CODE_ERROR

    # The provider saw, on each attempt, a traceparent naming that attempt's span.
    hits = fake.hits("/flaky")
    assert [h.headers["traceparent"] for h in hits] == [
        f"00-{CALLER_TRACE}-{a.span_id.hex()}-01" for a in attempts]
    assert all(h.headers.get("tracestate") == "vendor=x" for h in hits)
    # Nothing exported holds the injected key or the caller's credentials.
    with collector.lock:
        exported = repr([(r, s) for r, s in collector.spans])
    assert INJECTED not in exported and APP_SECRET not in exported and "caller-token-abc" not in exported

    # A call without a traceparent starts a trace of its own.
    fresh = requests.get("http://api.demo.test/hello", proxies=gw.proxies(APP, APP_SECRET), timeout=10)
    trace_id = gw.log_for(fresh.headers["X-Request-ID"])["trace_id"]
    assert trace_id != CALLER_TRACE
    root, attempt = sorted(collector.trace(trace_id, 2), key=lambda s: s.kind)
    assert root.parent_span_id == b"" and attempt.parent_span_id == root.span_id
    sent = fake.hits("/hello")[0].headers["traceparent"]
    # A new trace's flags may carry W3C's "random trace id" bit beside "sampled".
    assert sent[:-2] == f"00-{trace_id}-{attempt.span_id.hex()}-" and int(sent[-2:], 16) & 1
    with collector.lock:
        resource = collector.spans[0][0]
    assert resource["service.name"] == "egress-gateway"

    # A call to a host no service owns (forwarded by mitmproxy itself) is one span, the host's parent.
    other = FakeProvider()
    try:
        other.on("GET", "/open", Reply(200, {"open": True}))
        passing = requests.get(f"{other.url}/open", proxies=gw.proxies(APP, APP_SECRET), timeout=10,
                               headers={"traceparent": f"00-{OTHER_TRACE}-{CALLER_SPAN}-01"})
        assert passing.status_code == 200 and passing.json() == {"open": True}
        (span,) = collector.trace(OTHER_TRACE, 1)
        assert span.name == "gateway.call" and span.parent_span_id.hex() == CALLER_SPAN
        assert attributes(span.attributes)["http.response.status_code"] == 200
        assert other.hits("/open")[0].headers["traceparent"] == f"00-{OTHER_TRACE}-{span.span_id.hex()}-01"
    finally:
        other.close()


def metric_value(gw: Gateway, series: str) -> float | None:
    text = requests.get(f"{gw.admin}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return None


def test_a_dead_collector_costs_nothing_but_a_counter(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                                      gateways: list[Gateway]) -> None:
    flaky_then_ok(fake)
    gw = Gateway(rules(tmp_path, fake), confdir, env={"DEMO_KEY": INJECTED},
                 args=["--set", f"gateway_otlp={refused_url()}"])
    gateways.append(gw.start())
    proxies = gw.proxies(APP, APP_SECRET)
    session = requests.Session()
    for _ in range(20):
        started = time.monotonic()
        answer = session.get("http://api.demo.test/hello", proxies=proxies, timeout=10)
        assert answer.json()["code"] == 0
        # No call waits for the collector (its export timeout is 2 s).
        assert time.monotonic() - started < 1.5
    failed = 'gateway_trace_spans_dropped_total{reason="export_failed"}'
    wait_until(lambda: (metric_value(gw, failed) or 0) >= 1, 20, what="the export failure counted")
    assert metric_value(gw, 'gateway_trace_spans_dropped_total{reason="queue_full"}') == 0
    # And calls keep being served while the exporter fails.
    assert session.get("http://api.demo.test/hello", proxies=proxies, timeout=10).json()["code"] == 0
    assert len(fake.hits("/hello")) == 21


def test_tracing_off_loads_no_sdk_and_logs_no_trace_id(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                                       gateways: list[Gateway]) -> None:
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import runpy; "
             "runpy.run_path(sys.argv[1] + '/addons/gateway.py'); "
             "print(sorted(m for m in sys.modules if m.startswith(('addons.tracing', 'opentelemetry.sdk.trace', "
             "'opentelemetry.exporter'))))")
    out = subprocess.run([sys.executable, "-c", probe, str(ROOT)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    # (redis-py imports opentelemetry's metrics API when it is installed: that is not tracing.)
    assert out.stdout.strip() == "[]"
    fake.on("GET", "/hello", Reply(200, {"hello": "world"}))
    gw = Gateway(rules(tmp_path, fake), confdir, env={"DEMO_KEY": INJECTED})
    gateways.append(gw.start())
    answer = requests.get("http://api.demo.test/hello", proxies=gw.proxies(APP, APP_SECRET), timeout=10,
                          headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    assert answer.json()["code"] == 0
    assert "trace_id" not in gw.log_for(answer.headers["X-Request-ID"])
    # Off, the gateway does not touch trace context: the caller's header passes on as it came.
    assert fake.hits("/hello")[0].headers["traceparent"] == f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


def test_bad_otlp_url_is_refused_with_a_clear_message(tmp_path: Path, confdir: Path, fake: FakeProvider) -> None:
    gw = Gateway(rules(tmp_path, fake), confdir, env={"DEMO_KEY": INJECTED},
                 args=["--set", "gateway_otlp=collector:4318"])
    gw.start(expect_ready=False)
    try:
        assert gw.proc is not None
        gw.proc.wait(30)
        assert gw.proc.returncode != 0
        assert "gateway_otlp must be an http:// or https:// URL" in gw.output()
    finally:
        gw.stop()
