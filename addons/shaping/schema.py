"""Rule-file fields of shaping: `queue:` on a quota entry, `gateway.queue_max`, `provider_quota:`."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from addons.rules.fields import Duration, Model

# A wait longer than this holds a caller's connection (and a slot of queue_max) for no good reason:
# a caller that can wait a minute can retry a 429 itself.
MAX_QUEUE_WAIT = 60.0
DEFAULT_QUEUE_MAX = 1000


def _check_wait(value: float | None) -> float | None:
    if value is not None and not 0 < value <= MAX_QUEUE_WAIT:
        raise ValueError(f"queue: a wait must be above 0 and at most {MAX_QUEUE_WAIT:g}s")
    return value


QueueWait = Annotated[Duration | None, AfterValidator(_check_wait)]
QueueMax = Annotated[int, Field(ge=0, le=100_000)]


def _check_header(value: str | None) -> str | None:
    if value is not None and not value.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"{value!r} is not a header name")
    return value


HeaderName = Annotated[str | None, AfterValidator(_check_header)]


class ProviderQuotaSpec(Model):
    """Header names of a provider's own quota. The IETF `RateLimit` / `RateLimit-Policy` fields, a
    429's `Retry-After` and WeChat's 45009/45011 are understood without any configuration."""

    remaining: HeaderName = None  # e.g. X-RateLimit-Remaining
    reset: HeaderName = None  # e.g. X-RateLimit-Reset: seconds, unix time or an HTTP date
