"""The Grafana dashboard in dashboards/gateway.json names only metrics that exist: every series an
expression selects is one the gateway exports (SPEC 10, read from its own registry; the trace export
counter) or one SPEC 13/14 names for the cache and the queues. A renamed metric fails here, not on
an operator's empty panel."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from addons.metrics import Metrics
from tests.conftest import ROOT

DASHBOARD = ROOT / "dashboards" / "gateway.json"
# SPEC 13 and 14 (the cache and the queues) with their types; exported when those features run.
SPEC_FEATURE_METRICS = {
    "gateway_cache_requests_total": "counter",
    "gateway_queue_wait_seconds": "histogram",
    "gateway_queue_depth": "gauge",
    "gateway_provider_quota_remaining": "gauge",
}
EXTRA = {"gateway_trace_spans_dropped_total": "counter"}  # added by addons/chain/tracing.py
SPEC_10 = {
    "gateway_requests_total", "gateway_request_duration_seconds", "gateway_upstream_duration_seconds",
    "gateway_retries_total", "gateway_quota_rejections_total", "gateway_upstream_up",
    "gateway_token_refreshes_total", "gateway_rules_reloads_total", "gateway_state_errors_total",
}
# PromQL words that look like identifiers but are not series.
PROMQL = {"sum", "min", "max", "avg", "count", "by", "without", "rate", "increase", "irate", "histogram_quantile",
          "le", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "topk",
          "bottomk", "clamp_min", "clamp_max", "abs", "label_values", "time", "vector", "scalar", "delta"}


def series_names(kind: str, name: str) -> set[str]:
    base = name.removesuffix("_total")
    if kind == "counter":
        return {base + "_total"}
    if kind == "histogram":
        return {name + s for s in ("_bucket", "_sum", "_count")}
    return {name}


def known_series() -> dict[str, str]:
    """Series name -> family, from the gateway's own registry plus the feature metrics above."""
    known: dict[str, str] = {}
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        for series in series_names(family.type, name):
            known[series] = name
    for name, kind in {**SPEC_FEATURE_METRICS, **EXTRA}.items():
        for series in series_names(kind, name):
            known[series] = name
    return known


def expressions(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                found.append(value)
            elif key == "query" and isinstance(value, str) and "label_values" in value:
                found.append(value)
            else:
                found.extend(expressions(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(expressions(item))
    return found


def selected_series(expr: str) -> set[str]:
    """Identifiers outside label matchers, {{legend}} and strings that are not PromQL words."""
    text = re.sub(r'"[^"]*"', '""', expr)  # label values
    text = re.sub(r"\{[^{}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges ($__rate_interval)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    text = re.sub(r"\blabel_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,[^)]*\)", r"\1", text)  # its label
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {w for w in words if w not in PROMQL}


def test_dashboard_is_valid_grafana_json_with_the_promised_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    assert any(i["pluginId"] == "prometheus" for i in dashboard["__inputs"])
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for what in ("by code", "latency quantiles", "targets up", "quota rejections", "token refreshes", "cache",
                 "queue"):
        assert what in titles, what
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_expression_names_only_known_metric_families() -> None:
    known = known_series()
    exprs = expressions(json.loads(DASHBOARD.read_text()))
    assert len(exprs) >= 20
    used: set[str] = set()
    for expr in exprs:
        names = selected_series(expr)
        assert names, f"no metric in {expr!r}"
        unknown = names - set(known)
        assert not unknown, f"{expr!r} names unknown series {sorted(unknown)}"
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        used |= {known[n] for n in names}
    # Every SPEC 10 family is on the dashboard somewhere.
    assert SPEC_10 <= used, sorted(SPEC_10 - used)


def test_the_checker_catches_a_misspelt_metric() -> None:
    known = known_series()
    assert selected_series('sum by (code) (rate(gateway_request_total{service=~"$service"}[$__rate_interval]))') \
        - set(known) == {"gateway_request_total"}
    assert not selected_series('histogram_quantile(0.99, sum by (le) (rate(gateway_request_duration_seconds_bucket'
                               '{service=~"$service"}[5m])))') - set(known)


def test_readme_says_how_to_import_it() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "dashboards/gateway.json" in readme and "Import" in readme
    assert Path(DASHBOARD).is_file()
