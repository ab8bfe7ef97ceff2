"""The rule files (SPEC 3) as typed objects. Each capability keeps its own schema beside its code
(credentials/, signing/, cache/, quota/, identity/ schema.py); this module composes them into files."""

from __future__ import annotations

import re
import ssl
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator, model_validator

from addons.cache.schema import CacheSpec, GatewayCacheSpec
from addons.credentials.schema import CredentialsSpec, NoCredentials
from addons.identity.schema import AppSpec
from addons.quota.schema import QuotaSpec
from addons.rules.fields import Duration, FileText, Model, Name, Networks
from addons.shaping.schema import DEFAULT_QUEUE_MAX, ProviderQuotaSpec, QueueMax
from addons.signing.schema import SigningSpec

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


class JsonEnvelope(Model):
    type: Literal["json"]
    success_field: str | None = None  # absent: any 2xx answer is success
    success_values: list[Any] = [0, "0", True, "success", "SUCCESS", "ok", "OK"]
    message_field: str | None = None
    data_field: str | None = None  # absent: the whole body is data
    codes: dict[str, int] = {}  # provider code -> gateway code, for codes the defaults misjudge


class NamedEnvelope(Model):
    type: Literal["wechat", "alipay", "xml", "raw", "wechatpay_v3"]


EnvelopeKind = Literal["wechat", "alipay", "json", "xml", "raw", "wechatpay_v3"]
EnvelopeSpec = EnvelopeKind | Annotated[JsonEnvelope | NamedEnvelope, Field(discriminator="type")]


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
