"""The gateway's code table (SPEC 5): every code, its HTTP status and whose fault it is."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Code(IntEnum):
    OK = 0
    UPSTREAM_ERROR = -1000
    UPSTREAM_TIMEOUT = -1001
    UPSTREAM_AUTH = -1002
    UPSTREAM_UNAVAILABLE = -1003
    UPSTREAM_UNREADABLE = -1004
    UPSTREAM_RATE_LIMITED = -1005
    CALLER_UNIDENTIFIED = -2001
    CALLER_SIGNATURE = -2002
    CALLER_FORBIDDEN = -2003
    CALLER_QUOTA = -2004
    CALLER_INVALID = -2005
    GATEWAY_MISCONFIGURED = -3001
    GATEWAY_INTERNAL = -3002


HTTP_STATUS: dict[int, int] = {
    0: 200,
    -1000: 502,
    -1001: 504,
    -1002: 502,
    -1003: 503,
    -1004: 502,
    -1005: 503,
    -2001: 407,
    -2002: 401,
    -2003: 403,
    -2004: 429,
    -2005: 400,
    -3001: 503,
    -3002: 500,
}


# A provider's HTTP status that says more than "an error" (SPEC 5); every other status outside
# 2xx/3xx is -1000. The envelope adapters and the pass-through log line judge by it alike.
UPSTREAM_STATUS_CODES: dict[int, int] = {
    401: Code.UPSTREAM_AUTH,
    403: Code.UPSTREAM_AUTH,
    400: Code.CALLER_INVALID,
    404: Code.CALLER_INVALID,
    422: Code.CALLER_INVALID,
    429: Code.UPSTREAM_RATE_LIMITED,
    503: Code.UPSTREAM_UNAVAILABLE,
}


def code_for_status(status: int) -> int:
    """The gateway code of a provider answer judged by its HTTP status alone (1xx too is an error)."""
    if 200 <= status < 400:
        return Code.OK
    return UPSTREAM_STATUS_CODES.get(status, Code.UPSTREAM_ERROR)


def source_of(code: int) -> str | None:
    """Whose fault a code is: the thousands digit says it (SPEC 5)."""
    if code == 0:
        return None
    if -2000 < code <= -1000:
        return "upstream"
    if -3000 < code <= -2000:
        return "caller"
    return "gateway"


def http_status(code: int) -> int:
    return HTTP_STATUS.get(code, 500 if code < 0 else 200)


@dataclass
class GatewayError(Exception):
    """A call ends with this code and message; raised by pure parts, turned into an envelope by the chain.

    `message` is shown to the caller, so it must never contain a provider body, a secret or an
    internal host name. `detail` goes to the access log only (redacted there).
    """

    code: int
    message: str
    detail: str = ""
    headers: dict[str, str] | None = None

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
