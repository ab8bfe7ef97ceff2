"""A service's upstream in the rules (SPEC 3, 7): where it is, how it is retried, how its health is
watched, and what answers when no target may take a call."""

from __future__ import annotations

import ssl
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator

from addons.rules.fields import Duration, FileText, Model

HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: an upstream URL takes no query or fragment")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    return value.rstrip("/")


UpstreamURL = Annotated[str, AfterValidator(_check_url)]


def _upper_method(value: str) -> str:
    method = value.upper()
    if method not in HTTP_METHODS:
        raise ValueError(f"unknown HTTP method {value!r}")
    return method


HttpMethod = Annotated[str, AfterValidator(_upper_method)]


def _check_ca(value: str | None) -> str | None:
    if value is not None:
        try:
            ssl.create_default_context().load_verify_locations(cadata=value)
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"ca is not a usable PEM certificate bundle ({exc})") from None
    return value


class UpstreamSpec(Model):
    url: UpstreamURL
    backup: UpstreamURL | None = None
    timeout: Duration = 10.0
    # TLS to the provider: `ca` (PEM text or file:path) is trusted besides the system's CAs, for
    # providers on a private CA; `verify: false` turns verification off (a test environment only).
    ca: Annotated[FileText | None, AfterValidator(_check_ca)] = None
    verify: bool = True


RetryOn = Literal["timeout", "connect"] | int


class RetrySpec(Model):
    attempts: int = Field(3, ge=1, le=10)
    backoff: Duration = 0.2
    max_backoff: Duration = 2.0
    deadline: Duration | None = None  # default: enough for every attempt and wait
    on: list[RetryOn] = ["timeout", "connect", 502, 503, 504]
    methods: list[HttpMethod] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]

    @field_validator("on")
    @classmethod
    def _codes(cls, value: list[Any]) -> list[Any]:
        for item in value:
            if isinstance(item, int) and not (100 <= item <= 599 or -1999 <= item <= -1000):
                raise ValueError(f"retry.on: {item} is neither an HTTP status nor an upstream code (-1xxx)")
        return value


class HealthSpec(Model):
    path: str = "/"
    interval: Duration = 10.0
    timeout: Duration = 2.0
    unhealthy_after: int = Field(3, ge=1)
    healthy_after: int = Field(2, ge=1)


class FallbackSpec(Model):
    code: int = -1003
    message: str | None = None
    data: Any = None

