"""Times as written in logs, /status and /readyz: RFC 3339 in UTC with a `Z` (no mitmproxy)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, overload

Precision = Literal["seconds", "milliseconds"]


@overload
def rfc3339(ts: float, timespec: Precision = "milliseconds") -> str: ...
@overload
def rfc3339(ts: None, timespec: Precision = "milliseconds") -> None: ...
@overload
def rfc3339(ts: float | None, timespec: Precision = "milliseconds") -> str | None: ...


def rfc3339(ts: float | None, timespec: Precision = "milliseconds") -> str | None:
    """`2026-01-02T03:04:05.678Z` for a Unix time; None stays None (a time that has not happened)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")
