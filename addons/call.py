"""One call through the gateway: what the chain learns about it, hook by hook, until it is logged."""

from __future__ import annotations

import itertools
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from addons.cache.policy import CallCache
    from addons.rules.router import Route

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,128}$")


# A random per-process prefix and a counter: unique across a fleet and restarts, and far cheaper per
# call than uuid4 (no system call).
_ID_PREFIX = os.urandom(10).hex()
_ID_COUNTER = itertools.count(1)


def request_id_from(header: str | None) -> str:
    """The caller's X-Request-ID when it is well-formed, else a new one."""
    if header and REQUEST_ID_RE.match(header):
        return header
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


@dataclass(slots=True)
class Call:
    request_id: str
    http_method: str
    url: str  # as the caller named it (redacted before it is written anywhere)
    host: str = ""  # the host the caller named (Host header or authority), computed once per call
    ts: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    app: str | None = None
    service: str = "_"
    method: str = "_"
    route: Route | None = None
    passthrough: bool = False  # forwarded natively by mitmproxy (a host no service owns)
    code: int | None = None
    status: int | None = None
    message: str = ""
    attempts: int = 0
    target: str | None = None
    upstream_ms: float | None = None
    error: str = ""  # what went wrong, for the log only (redacted when written)
    degraded: bool = False
    raw: bool = False  # the caller gets the provider's body as it is
    headers: dict[str, str] = field(default_factory=dict)  # added to the caller's answer
    logged: bool = False
    cache: CallCache | None = None  # set for calls of a method with a `cache:` block
    span: Any = None  # the call's trace span, while tracing is on (addons/tracing)
    trace_id: str | None = None

    @property
    def rule(self) -> str:
        return f"{self.service}.{self.method}"
