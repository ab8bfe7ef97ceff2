"""The `cache:` block of a service or method, and `gateway.cache` (SPEC 13)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

from addons.rules.fields import Duration, Model

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)b?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
CACHEABLE_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}


def parse_size(value: object) -> int:
    """Bytes in a size: `512`, `256k`, `64m`, `1g` (binary multiples)."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative: {value!r}")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(match.group(1)) * _SIZE_FACTORS[match.group(2).lower()]
    raise ValueError(f"not a size: {value!r} (write 512, 256k, 64m or 1g)")


Size = Annotated[int, BeforeValidator(parse_size)]


def _check_part(value: str) -> str:
    if value in ("app", "query", "body"):
        return value
    if value.lower().startswith("header:") and _HEADER_NAME.match(value[7:]):
        return "header:" + value[7:].lower()
    raise ValueError(f"cache key part {value!r} must be app, query, body or header:NAME")


def _upper_methods(value: Any) -> Any:
    if isinstance(value, list):
        methods = [str(m).upper() for m in value]
        for method in methods:
            if method not in CACHEABLE_METHODS:
                raise ValueError(f"unknown HTTP method {method!r}")
        return methods
    return value


class CacheSpec(Model):
    ttl: Duration = Field(gt=0)
    key: list[Annotated[str, AfterValidator(_check_part)]] = ["query", "body"]
    methods: Annotated[list[str], BeforeValidator(_upper_methods)] = ["GET", "HEAD"]
    stale_if_error: Duration = 0.0
    max_entry: Size = Field(256 * 1024, ge=1)


class GatewayCacheSpec(Model):
    max_memory: Size = Field(64 * 1024 * 1024, ge=1)
