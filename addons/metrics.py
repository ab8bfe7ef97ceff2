"""Prometheus metrics of SPEC 10. Labels come from configured names only: anything else is `_`, so a
caller cannot grow the series count. Children are cached, so a call costs dict lookups, not label parsing."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("gateway_requests_total", "Calls answered, by rule, app and gateway code.",
                                ["service", "method", "app", "code"], registry=r)
        self.duration = Histogram("gateway_request_duration_seconds", "Whole call latency as the caller sees it.",
                                  ["service", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstream = Histogram("gateway_upstream_duration_seconds", "One upstream attempt, connect to last byte.",
                                  ["service", "target"], buckets=LATENCY_BUCKETS, registry=r)
        self.retries = Counter("gateway_retries_total", "Upstream attempts after the first.", ["service"], registry=r)
        self.quota_rejections = Counter("gateway_quota_rejections_total", "Calls refused by a quota.",
                                        ["app", "service", "scope"], registry=r)
        self.upstream_up = Gauge("gateway_upstream_up", "1 while a target is considered healthy.",
                                 ["service", "target"], registry=r)
        self.token_refreshes = Counter("gateway_token_refreshes_total", "Provider token fetches, by result.",
                                       ["service", "result"], registry=r)
        self.reloads = Counter("gateway_rules_reloads_total", "Rule set loads, by result.", ["result"], registry=r)
        self.state_errors = Counter("gateway_state_errors_total",
                                    "State-store operations that failed (Redis unreachable).", registry=r)
        self.cache_requests = Counter("gateway_cache_requests_total",
                                      "Calls of cached methods, by how the cache answered (hit, miss, stale, bypass).",
                                      ["service", "method", "result"], registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}
        self._known_services: frozenset[str] = frozenset()
        self._known_methods: frozenset[str] = frozenset()
        self._known_apps: frozenset[str] = frozenset()
        # Both results exist from the start at 0, so an alert on increase(...{result="error"}) works
        # before the first failed reload (a series that appears only at its first event has no increase).
        for result in ("success", "error"):
            self._child(self.reloads, result)

    def set_names(self, services: set[str], methods: set[str], apps: set[str]) -> None:
        """The configured names (after each rules load): only these appear as label values.

        The `gateway_upstream_up` series are dropped here: the caller sets them again for the targets
        of the new rule set right after (in the same step, so no scrape sees them missing), and a
        service or backup that the reload removed must not go on reporting its last state forever."""
        self._known_services = frozenset(services)
        self._known_methods = frozenset(methods)
        self._known_apps = frozenset(apps)
        up = id(self.upstream_up)
        for key in [k for k in self._children if k[0] == up]:
            del self._children[key]
            try:
                self.upstream_up.remove(*key[1:])
            except KeyError:
                pass

    def _label(self, value: str | None, known: frozenset[str]) -> str:
        return value if value is not None and value in known else "_"

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*labels)
            self._children[key] = child
        return child

    def observe_call(self, service: str, method: str, app: str | None, code: int, seconds: float) -> None:
        svc = self._label(service, self._known_services)
        mth = method if f"{service}.{method}" in self._known_methods else "_"
        self._child(self.requests, svc, mth, self._label(app, self._known_apps), str(code)).inc()
        self._child(self.duration, svc, mth).observe(seconds)

    def observe_upstream(self, service: str, target: str, seconds: float) -> None:
        self._child(self.upstream, self._label(service, self._known_services), target).observe(seconds)

    def retried(self, service: str) -> None:
        self._child(self.retries, self._label(service, self._known_services)).inc()

    def quota_rejected(self, app: str | None, service: str, scope: str) -> None:
        self._child(self.quota_rejections, self._label(app, self._known_apps),
                    self._label(service, self._known_services), scope).inc()

    def set_up(self, service: str, target: str, up: bool) -> None:
        self._child(self.upstream_up, self._label(service, self._known_services), target).set(1 if up else 0)

    def token_refreshed(self, service: str, result: str) -> None:
        self._child(self.token_refreshes, self._label(service, self._known_services), result).inc()

    def cache_result(self, service: str, method: str, result: str) -> None:
        mth = method if f"{service}.{method}" in self._known_methods else "_"
        self._child(self.cache_requests, self._label(service, self._known_services), mth, result).inc()

    def reloaded(self, result: str) -> None:
        self._child(self.reloads, result).inc()

    def state_error(self) -> None:
        self.state_errors.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
