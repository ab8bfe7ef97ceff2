"""The rule files (SPEC 3) as typed objects. Each capability keeps its own schema beside its code
(credentials/, signing/, cache/, quota/, identity/, envelope/, upstream/, shaping/ schema.py); this
module composes them into files."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator, model_validator

from addons.cache.schema import CacheSpec, GatewayCacheSpec
from addons.credentials.schema import CredentialsSpec, NoCredentials
from addons.envelope.schema import EnvelopeKind, EnvelopeSpec, JsonEnvelope, NamedEnvelope
from addons.identity.schema import AppSpec
from addons.quota.schema import QuotaSpec
from addons.rules.fields import Duration, Model, Name, Networks
from addons.shaping.schema import DEFAULT_QUEUE_MAX, ProviderQuotaSpec, QueueMax
from addons.signing.schema import SigningSpec
from addons.upstream.schema import (
    HTTP_METHODS,
    FallbackSpec,
    HealthSpec,
    HttpMethod,
    RetryOn,
    RetrySpec,
    UpstreamSpec,
    UpstreamURL,
)


def _check_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"path {value!r} must start with '/'")
    if re.search(r"\{(?![A-Za-z_][A-Za-z0-9_]*\})", value):
        raise ValueError(f"path {value!r}: a template is written {{name}}")
    names = re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", value)
    if len(names) != len(set(names)):
        # The router compiles one named group per parameter: a repeated name could never be routed.
        raise ValueError(f"path {value!r}: each {{name}} may appear once")
    if "\0" in value:
        raise ValueError("path must not contain a NUL character")
    return value


Path = Annotated[str, AfterValidator(_check_path)]


class MethodSpec(Model):
    method: HttpMethod | None = None  # absent: any HTTP method (explicit calls use GET)
    path: Path
    quota: list[QuotaSpec] = []
    timeout: Duration | None = None  # overrides upstream.timeout for this method
    cache: CacheSpec | None = None  # replaces the service's `cache:` for this method (SPEC 13)


class ServiceSpec(Model):
    service: Name
    hosts: list[str] = []
    upstream: UpstreamSpec
    credentials: CredentialsSpec = NoCredentials()
    signing: SigningSpec | None = None
    envelope: EnvelopeSpec = "json"
    retry: RetrySpec | None = None
    quota: list[QuotaSpec] = []
    health: HealthSpec | None = None
    fallback: FallbackSpec | None = None
    cache: CacheSpec | None = None  # SPEC 13
    methods: dict[Name, MethodSpec] = {}
    unmatched: Literal["allow", "deny"] = "allow"
    provider_quota: ProviderQuotaSpec | None = None  # shaping (SPEC 14): the provider's own quota headers

    @field_validator("hosts")
    @classmethod
    def _lower_hosts(cls, value: list[str]) -> list[str]:
        return [h.strip().lower().rstrip(".") for h in value]

    @model_validator(mode="after")
    def _one_signature(self) -> ServiceSpec:
        if self.signing is not None and self.credentials.type == "wechatpay_v3":
            raise ValueError("credentials of type wechatpay_v3 sign every request themselves; remove 'signing:'")
        return self

    @model_validator(mode="after")
    def _default_hosts(self) -> ServiceSpec:
        if not self.hosts:
            object.__setattr__(self, "hosts", [urlsplit(self.upstream.url).hostname or ""])
        return self


class RedactRule(Model):
    pattern: str
    replace: str = "***"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"redact pattern {value!r} does not compile: {exc}") from None
        return value


class EgressSpec(Model):
    """Where pass-through traffic may connect (SPEC 12)."""

    deny_private: bool = True
    allow_cidrs: Networks = []


class GatewaySpec(Model):
    require_app: bool = True
    unknown_hosts: Literal["allow", "deny"] = "allow"
    state_failure: Literal["open", "closed"] = "open"
    instances: int = Field(1, ge=1)
    redact: list[RedactRule] = []
    # SPEC 18: a client connection with no call in flight is closed after client_idle; a request's
    # headers must be complete within header_timeout (slowloris).
    client_idle: Annotated[Duration, Field(gt=0)] = 60.0
    header_timeout: Annotated[Duration, Field(gt=0)] = 10.0
    cache: GatewayCacheSpec = GatewayCacheSpec()
    egress: EgressSpec = EgressSpec()
    queue_max: QueueMax = DEFAULT_QUEUE_MAX  # shaping (SPEC 14): calls waiting per process


class AppsFile(Model):
    apps: dict[Name, AppSpec] = {}
    gateway: GatewaySpec | None = None


# Defined beside their capability; named here too, as the composed file's parts.
__all__ = [
    "HTTP_METHODS",
    "AppSpec",
    "AppsFile",
    "EgressSpec",
    "EnvelopeKind",
    "EnvelopeSpec",
    "FallbackSpec",
    "GatewaySpec",
    "HealthSpec",
    "HttpMethod",
    "JsonEnvelope",
    "MethodSpec",
    "NamedEnvelope",
    "QuotaSpec",
    "RedactRule",
    "RetryOn",
    "RetrySpec",
    "ServiceSpec",
    "UpstreamSpec",
    "UpstreamURL",
]
