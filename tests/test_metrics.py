"""Metrics of SPEC 10: every family with its type and label names, labels drawn from configured names
only (anything else is `_`), in Prometheus text format on the admin listener after real traffic."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from addons.metrics import Metrics
from tests.conftest import wait_until
from tests.fakes import FakeProvider, Reply
from tests.harness import Gateway, write_rules

# name -> (type, label names). The parser names counter families without `_total`.
SPEC_FAMILIES: dict[str, tuple[str, set[str]]] = {
    "gateway_requests_total": ("counter", {"service", "method", "app", "code"}),
    "gateway_request_duration_seconds": ("histogram", {"service", "method"}),
    "gateway_upstream_duration_seconds": ("histogram", {"service", "target"}),
    "gateway_retries_total": ("counter", {"service"}),
    "gateway_quota_rejections_total": ("counter", {"app", "service", "scope"}),
    "gateway_upstream_up": ("gauge", {"service", "target"}),
    "gateway_token_refreshes_total": ("counter", {"service", "result"}),
    "gateway_rules_reloads_total": ("counter", {"result"}),
    "gateway_state_errors_total": ("counter", set()),
}


def families(text: str) -> dict[str, Any]:
    out = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        out[name] = family
    return out


def label_names(family: Any) -> set[str]:
    """Label names of a family's samples, without the histogram's own `le`."""
    names: set[str] = set()
    for sample in family.samples:
        names |= set(sample.labels) - {"le"}
    return names


def samples(family: Any, suffix: str = "") -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for s in family.samples if s.name == family.name + suffix]


# -- the Metrics object itself ------------------------------------------------------------------------


def exercised() -> Metrics:
    m = Metrics()
    m.set_names({"demo"}, {"demo.hello", "demo._"}, {"order-service"})
    m.observe_call("demo", "hello", "order-service", 0, 0.012)
    m.observe_upstream("demo", "primary", 0.01)
    m.retried("demo")
    m.quota_rejected("order-service", "demo", "app")
    m.set_up("demo", "primary", True)
    m.token_refreshed("demo", "success")
    m.reloaded("success")
    m.state_error()
    return m


def test_every_spec_family_has_its_type_and_label_names() -> None:
    found = families(exercised().render().decode())
    for name, (kind, labels) in SPEC_FAMILIES.items():
        assert name in found, f"{name} missing"
        assert found[name].type == kind, f"{name} is a {found[name].type}, not a {kind}"
        assert label_names(found[name]) == labels, name


def test_unknown_names_become_underscore() -> None:
    m = Metrics()
    m.set_names({"demo"}, {"demo.hello", "demo._"}, {"order-service"})
    m.observe_call("evil-service", "drop_tables", "intruder", -2001, 0.001)
    m.observe_call("demo", "no-such-method", "intruder", -2005, 0.001)
    m.observe_call("demo", "hello", None, 0, 0.001)
    m.quota_rejected("intruder", "evil-service", "app")
    m.retried("evil-service")
    m.token_refreshed("evil-service", "error")
    m.set_up("evil-service", "primary", False)
    text = m.render().decode()
    for raw in ("evil-service", "drop_tables", "intruder", "no-such-method"):
        assert raw not in text
    requests_total = samples(families(text)["gateway_requests_total"], "_total")
    assert ({"service": "_", "method": "_", "app": "_", "code": "-2001"}, 1.0) in requests_total
    assert ({"service": "demo", "method": "_", "app": "_", "code": "-2005"}, 1.0) in requests_total
    assert ({"service": "demo", "method": "hello", "app": "_", "code": "0"}, 1.0) in requests_total


def test_reload_error_series_exists_before_the_first_error() -> None:
    reloads = samples(families(Metrics().render().decode())["gateway_rules_reloads_total"], "_total")
    assert ({"result": "error"}, 0.0) in reloads and ({"result": "success"}, 0.0) in reloads


def test_upstream_up_of_a_removed_service_goes_away() -> None:
    m = Metrics()
    m.set_names({"a", "b"}, set(), set())
    m.set_up("a", "primary", True)
    m.set_up("b", "backup", True)
    m.set_names({"a"}, set(), set())  # a reload dropped b; the chain then sets a's targets again
    m.set_up("a", "primary", True)
    up = samples(families(m.render().decode())["gateway_upstream_up"])
    assert up == [({"service": "a", "target": "primary"}, 1.0)]


# -- /metrics of a running gateway ------------------------------------------------------------------


def metrics_rules(tmp_path: Path, fake: FakeProvider) -> Path:
    return write_rules(tmp_path / "rules", {
        "demo.yaml": f"""
            service: demo
            hosts: [api.demo.test]
            upstream: {{url: "{fake.url}", timeout: 2s}}
            credentials: {{type: static, header: X-Api-Key, value: "${{DEMO_KEY}}"}}
            retry: {{attempts: 3, backoff: 10ms, max_backoff: 20ms, on: [503]}}
            methods:
              hello: {{method: GET, path: /hello}}
              flaky: {{method: GET, path: /flaky}}
              limited: {{method: GET, path: /limited, quota: [{{limit: 1/min, per: app}}]}}
        """,
        "apps.yaml": """
            apps:
              order-service: {secret: s3cret-order-metrics}
            gateway: {require_app: true, unknown_hosts: allow, egress: {allow_cidrs: [127.0.0.0/8]}}
        """,
    })


def test_metrics_endpoint_after_real_traffic(tmp_path: Path, confdir: Path, fake: FakeProvider) -> None:
    fake.on("GET", "/hello", Reply(200, {"ok": True}))
    fake.on("GET", "/limited", Reply(200, {"ok": True}))
    # A host no service owns (a service's own upstream address is never pass-through).
    unowned = FakeProvider()
    unowned.on("GET", "/unowned-path", Reply(200, {"ok": True}))
    flaky_calls: list[int] = []

    def flaky(_seen: object) -> Reply:
        flaky_calls.append(1)
        return Reply(503, {"busy": True}) if len(flaky_calls) == 1 else Reply(200, {"ok": True})

    fake.on("GET", "/flaky", flaky)
    injected = "injected-metrics-key-7f3a9c"
    with closing(unowned), Gateway(metrics_rules(tmp_path, fake), confdir, env={"DEMO_KEY": injected}) as gw:
        good = gw.proxies("order-service", "s3cret-order-metrics")
        assert requests.get("http://api.demo.test/hello", proxies=good, timeout=10).json()["code"] == 0
        flaky_answer = requests.get("http://api.demo.test/flaky", proxies=good, timeout=10)
        assert flaky_answer.json()["code"] == 0 and flaky_answer.headers["X-Gateway-Attempts"] == "2"
        assert requests.get("http://api.demo.test/limited", proxies=good, timeout=10).json()["code"] == 0
        assert requests.get("http://api.demo.test/limited", proxies=good, timeout=10).json()["code"] == -2004
        # A method the service does not define, a service nobody defined, a host no service owns,
        # and an app that does not exist: none of these names may become a label value.
        requests.get("http://api.demo.test/no-such-method-xyz", proxies=good, timeout=10)
        requests.get("http://gateway.local/no-such-service-xyz/whatever", proxies=good, timeout=10)
        assert requests.get(f"{unowned.url}/unowned-path", proxies=good, timeout=10).status_code == 200
        intruder = requests.get("http://api.demo.test/hello", timeout=10,
                                proxies=gw.proxies("intruder-app-xyz", "guess"))
        assert intruder.status_code == 407

        def scraped() -> tuple[str, str] | None:
            r = requests.get(gw.admin + "/metrics", timeout=5)
            total = sum(s.value for f in text_string_to_metric_families(r.text) if f.name == "gateway_requests"
                        for s in f.samples if s.name == "gateway_requests_total")
            return (r.headers["Content-Type"], r.text) if r.status_code == 200 and total >= 8 else None

        content_type, text = wait_until(scraped, 10, what="8 calls counted in /metrics")  # type: ignore[misc]

    assert content_type.startswith("text/plain") and "version=" in content_type
    found = families(text)
    for name, (kind, labels) in SPEC_FAMILIES.items():
        assert name in found, f"{name} missing from /metrics"
        assert found[name].type == kind, name
        if found[name].samples:
            assert label_names(found[name]) == labels, name
    # Families the traffic above must have produced samples for:
    for name in ("gateway_requests_total", "gateway_request_duration_seconds", "gateway_upstream_duration_seconds",
                 "gateway_retries_total", "gateway_quota_rejections_total", "gateway_upstream_up",
                 "gateway_rules_reloads_total", "gateway_state_errors_total"):
        assert found[name].samples, f"{name} has no samples"

    requests_total = samples(found["gateway_requests_total"], "_total")
    assert ({"service": "demo", "method": "hello", "app": "order-service", "code": "0"}, 1.0) in requests_total
    assert ({"service": "demo", "method": "limited", "app": "order-service", "code": "-2004"}, 1.0) \
        in requests_total
    assert any(labels["service"] == "demo" and labels["method"] == "_" for labels, _ in requests_total)
    assert any(labels["service"] == "_" and labels["method"] == "_" and labels["app"] == "order-service"
               for labels, _ in requests_total), "the pass-through call is counted as service _"
    assert any(labels["app"] == "_" and labels["code"] == "-2001" for labels, _ in requests_total)
    assert ({"service": "demo"}, 1.0) in samples(found["gateway_retries_total"], "_total")
    rejections = samples(found["gateway_quota_rejections_total"], "_total")
    assert [(labels["app"], labels["service"], value) for labels, value in rejections] == \
        [("order-service", "demo", 1.0)]
    assert ({"service": "demo", "target": "primary"}, 1.0) in samples(found["gateway_upstream_up"])
    assert ({"result": "success"}, 1.0) in samples(found["gateway_rules_reloads_total"], "_total")
    for raw in ("intruder-app-xyz", "no-such-method-xyz", "no-such-service-xyz", "unowned-path", "127.0.0.1",
                injected, "s3cret-order-metrics"):
        assert raw not in text, f"{raw!r} leaked into /metrics"
