"""The status page at the admin root (SPEC 19): one server-rendered HTML page for people, readable
without JavaScript, refreshing itself (meta refresh). Pure: it renders what the admin listener
gathered (the /status document, already redacted, plus the recent failures, the quota readings and
the figures of optional features). Every value is escaped, so a name or message holding markup is
shown as text; nothing here is a secret, since every input was redacted before it came here."""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from addons.recent import FailedCall, QuotaReading

REFRESH_S = 10
DASH = "-"
_WINDOWS = {1: "s", 60: "min", 3600: "hour", 86400: "day"}

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .2em} h2{font-size:1.15em;margin:1.4em 0 .4em} h3{font-size:1em;margin:.8em 0 .2em}
table{border-collapse:collapse;margin:.2em 0} th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top} th{background:#f3f3f3} .up{color:#070} .down{color:#b00;font-weight:bold}
.half-open{color:#a60} .muted{color:#777} .err{color:#b00} code{font-size:.95em}
"""


@dataclass
class PageInput:
    status: Mapping[str, Any]  # the /status document (redacted)
    failures: Sequence[FailedCall] = ()
    quotas: Sequence[QuotaReading] = ()
    # Optional features (cache, queues, tracing): name -> figures, or None while absent.
    features: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    now: float = field(default_factory=time.time)
    refresh_s: int = REFRESH_S


def e(value: Any) -> str:
    """Any value as escaped text; None is a dash."""
    if value is None or value == "":
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(e(v) for v in value) if value else DASH
    return html.escape(str(value), quote=True)


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="muted">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _state(target: Mapping[str, Any]) -> str:
    state = str(target.get("state") or ("up" if target.get("up") else "down"))
    css = state if state in ("up", "down", "half-open") else "muted"
    return f'<span class="{css}">{e(state)}</span>'


def _quota_text(reading: QuotaReading) -> str:
    per = _WINDOWS.get(reading.window, f"{reading.window}s")
    return f"{reading.used}/{reading.limit} per {per}"


def _quotas_of(service: str, quotas: Sequence[QuotaReading]) -> list[QuotaReading]:
    """Counters naming the service (`svc:NAME`, `m:NAME.method`); app-wide ones are listed apart."""
    mine = []
    for reading in quotas:
        parts = reading.key.split("|")
        if any(p == f"svc:{service}" or p.startswith(f"m:{service}.") for p in parts):
            mine.append(reading)
    return mine


def _services(page: PageInput) -> str:
    services: Mapping[str, Any] = page.status.get("services") or {}
    health: Mapping[str, Any] = page.status.get("health") or {}
    rows = []
    for name, info in services.items():
        if not info.get("enabled"):
            continue
        targets = (health.get(name) or {}).get("targets") or []
        target_cells = "<br>".join(
            f"{e(t.get('target'))} <code>{e(t.get('url'))}</code>: {_state(t)}"
            + (f' <span class="err">{e(t.get("last_error"))}</span>' if t.get("last_error") and not t.get("up")
               else "")
            for t in targets) or DASH
        quotas = "<br>".join(f"{e(q.scope)}: {e(_quota_text(q))}" for q in _quotas_of(name, page.quotas)) or DASH
        rows.append([e(name), e(info.get("hosts")), target_cells, quotas, e(len(info.get("methods") or []))])
    return _table(["service", "hosts", "targets and health", "quota use (this window)", "methods"], rows,
                  "no services loaded")


def _disabled(page: PageInput) -> str:
    services: Mapping[str, Any] = page.status.get("services") or {}
    rows = [[e(name), e(info.get("disabled_reason")), e(info.get("file"))]
            for name, info in services.items() if not info.get("enabled")]
    apps = (page.status.get("apps") or {}).get("disabled") or {}
    rows += [[f"app {e(name)}", e(why), DASH] for name, why in apps.items()]
    return _table(["disabled", "why", "file"], rows, "none")


def _all_quotas(page: PageInput) -> str:
    rows = [[f"<code>{e(q.key)}</code>", e(q.scope), e(_quota_text(q)),
             e(max(0, int(q.window_start + q.window - page.now)) if q.used else None)]
            for q in page.quotas]
    return _table(["counter", "scope", "used", "resets in (s)"], rows, "no quota checked yet")


def _flat(figures: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(_flat(value, name + "."))
        else:
            out.append((name, value))
    return out


def _features(page: PageInput) -> str:
    parts = []
    for name, figures in page.features.items():
        if figures is None:
            parts.append(f"<h3>{e(name)}</h3><p class=\"muted\">{DASH} (not in use)</p>")
            continue
        rows = [[e(k), e(v)] for k, v in _flat(figures)[:200]]
        parts.append(f"<h3>{e(name)}</h3>" + _table(["figure", "value"], rows, "no figures"))
    return "".join(parts)


def _reload(page: PageInput) -> str:
    rules: Mapping[str, Any] = page.status.get("rules") or {}
    errors = rules.get("last_reload_error") or []
    lines = [
        f"<p>rules version <code>{e(rules.get('version'))}</code> from {e(len(rules.get('files') or []))} file(s) "
        f"in <code>{e(rules.get('directory'))}</code>; last reload {e(rules.get('last_reload_at'))}: "
        + ('<span class="up">ok</span>' if rules.get("last_reload_ok", True) else '<span class="down">failed</span>')
        + "</p>"]
    if errors:
        lines.append("<ul>" + "".join(f'<li class="err">{e(err)}</li>' for err in errors) + "</ul>")
    return "".join(lines)


def _failures(page: PageInput) -> str:
    rows = [[e(when(f.ts)), e(f.code), e(f.status), e(f.rule), e(f.app), e(f.message),
             f"<code>{e(f.request_id)}</code>"] for f in page.failures]
    return _table(["when", "code", "status", "service.method", "app", "message", "request_id"], rows,
                  "no failed calls since the start")


def render(page: PageInput) -> str:
    status = page.status
    ready = status.get("ready")
    degraded = status.get("degraded") or []
    state = ('<span class="up">ready</span>' if ready else
             f'<span class="down">not ready</span> ({e(status.get("not_ready_reason"))})')
    if degraded:
        state += f' <span class="half-open">degraded: {e(degraded)}</span>'
    store = status.get("state") or {}
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="refresh" content="{int(page.refresh_s)}">'
        "<title>Egress gateway status</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>Egress gateway</h1>"
        f"<p>{state}; pid {e(status.get('pid'))}, up since {e(status.get('started_at'))}; "
        f"state store {e(store.get('backend'))}"
        + (" (unavailable)" if store.get("available") is False else "")
        + f'. <span class="muted">Shown {e(when(page.now))}; refreshes every {int(page.refresh_s)} s. '
        'Data: <a href="/status">/status</a> <a href="/metrics">/metrics</a></span></p>'
        "<h2>Services</h2>" + _services(page)
        + "<h2>Disabled</h2>" + _disabled(page)
        + "<h2>Recent failed calls</h2>" + _failures(page)
        + "<h2>Quotas</h2>" + _all_quotas(page)
        + (("<h2>Cache, queues, tracing</h2>" + _features(page)) if page.features else "")
        + "<h2>Rules</h2>" + _reload(page)
        + "</body></html>\n"
    )
