"""The `apps:` entries of the rule files (SPEC 7): who an app is and what it may call."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, model_validator

from addons.quota.schema import AppQuotaSpec
from addons.rules.fields import Model, Networks, Secret


def _check_pattern(value: str) -> str:
    if value != "*" and not re.match(r"^[A-Za-z0-9_*-]+(\.[A-Za-z0-9_*-]+)?$", value):
        raise ValueError(f"allow pattern {value!r} must look like 'service.method', 'service.*' or '*'")
    return value


def _check_host_pattern(value: str) -> str:
    if not re.match(r"^(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$", value.strip()):
        raise ValueError(f"passthrough pattern {value!r} must be a host name or '*.domain'")
    return value.strip().lower().rstrip(".")


class AppSpec(Model):
    secret: Secret | None = None
    sources: Networks = []
    allow: list[Annotated[str, AfterValidator(_check_pattern)]] = ["*"]
    quota: list[AppQuotaSpec] = []
    envelope: Literal["raw", "unified"] | None = None
    # Hosts no service owns that this app may reach (SPEC 12); None: whatever unknown_hosts allows.
    passthrough: list[Annotated[str, AfterValidator(_check_host_pattern)]] | None = None

    @model_validator(mode="after")
    def _identifiable(self) -> AppSpec:
        if self.secret is None and not self.sources:
            raise ValueError("an app needs a 'secret' or 'sources' to be identified by")
        return self
