"""The running gateway: the rule set compiled for the hot path, and what outlives a reload.

A reload builds a new `Compiled` and swaps one reference; calls in flight keep the one they started
with. A service whose rule did not change keeps its runtime object, so its token cache, health
state and prober survive the reload."""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from addons.credentials import Credential, make_credential
from addons.envelope import Adapter, make_adapter
from addons.identity.directory import AppDirectory
from addons.quota.table import QuotaTable
from addons.redact import Redactor
from addons.rules.loader import RuleSet
from addons.rules.router import Route, Router
from addons.rules.schema import ServiceSpec
from addons.signing import Signer, credential_signer, make_signer
from addons.state.base import QuotaCheck
from addons.upstream.health import ServiceHealth
from addons.upstream.retry import RetryPolicy

log = logging.getLogger("gateway")


def spec_key(spec: Any) -> str:
    """Identity of a rule, secrets included (a rotated secret must rebuild the token cache)."""

    def reveal(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        return str(value)

    blob = json.dumps(spec.model_dump(), default=reveal, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Target:
    name: str  # "primary" | "backup"
    scheme: str
    host: str
    port: int
    base_path: str


def _target(name: str, url: str) -> Target:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Target(name, parts.scheme, parts.hostname or "", port, parts.path.rstrip("/"))


def upstream_ssl(spec: ServiceSpec) -> ssl.SSLContext | bool | None:
    """What aiohttp's `ssl=` gets for this service: None is its default (system CAs, verified)."""
    if not spec.upstream.verify:
        log.warning("gateway: TLS verification of %s's upstream is OFF (upstream.verify: false)", spec.service)
        return False
    if spec.upstream.ca is None:
        return None
    context = ssl.create_default_context()
    context.load_verify_locations(cadata=spec.upstream.ca)
    return context


def envelope_kind(spec: ServiceSpec) -> str:
    return spec.envelope if isinstance(spec.envelope, str) else spec.envelope.type


class ServiceRuntime:
    """Everything a call to one service needs, built once per rule (not per call)."""

    def __init__(self, spec: ServiceSpec, credential_context: Any, redactor: Redactor | None = None) -> None:
        self.spec = spec
        self.name = spec.service
        self.key = spec_key(spec)
        # The redactor cleans provider sentences quoted to callers (Alipay sub_msg, a json message_field).
        self.adapter: Adapter = make_adapter(spec.envelope, redactor)
        self.raw = envelope_kind(spec) == "raw"
        self.signer: Signer | None = (make_signer(spec.signing, spec.service) if spec.signing
                                      else credential_signer(spec.credentials, spec.service))
        self.credential: Credential = make_credential(spec.credentials, credential_context)
        self.retry = RetryPolicy.from_spec(spec.retry, spec.upstream.timeout)
        self.method_retry = {
            name: RetryPolicy.from_spec(spec.retry, m.timeout)
            for name, m in spec.methods.items() if m.timeout is not None
        }
        self.targets = {"primary": _target("primary", spec.upstream.url)}
        if spec.upstream.backup:
            self.targets["backup"] = _target("backup", spec.upstream.backup)
        self.ssl = upstream_ssl(spec)
        self.health = ServiceHealth.from_spec(spec.service, spec.upstream, spec.health)
        self.health.ssl = self.ssl

    def use_redactor(self, redactor: Redactor) -> None:
        """A runtime kept across a reload quotes provider sentences through the new rules' redactor:
        a `redact` rule or a secret added by the reload applies to every service at once."""
        if hasattr(self.adapter, "redactor"):
            self.adapter.redactor = redactor

    def policy(self, method: str) -> RetryPolicy:
        return self.method_retry.get(method, self.retry)

    def secrets(self) -> list[str]:
        values = list(self.credential.secrets())
        if self.spec.signing is not None:
            for field_value in self.spec.signing.__dict__.values():
                if isinstance(field_value, SecretStr):
                    values.append(field_value.get_secret_value())
        return values

    async def close(self) -> None:
        await self.credential.close()


@dataclass
class Compiled:
    rules: RuleSet
    router: Router
    apps: AppDirectory
    services: dict[str, ServiceRuntime]
    redactor: Redactor
    quota_table: QuotaTable = field(init=False)

    def __post_init__(self) -> None:
        self.quota_table = QuotaTable(self.rules.apps)

    @property
    def gateway(self) -> Any:
        return self.rules.gateway

    def quotas(self, app: str | None, route: Route, now: float) -> list[QuotaCheck]:
        """The quotas of one (app, rule) pair (see QuotaTable)."""
        return self.quota_table.checks(app, route, now)


def compile_rules(rules: RuleSet, previous: Compiled | None, credential_context: Any,
                  base_redactor: Redactor | None = None) -> tuple[Compiled, list[ServiceRuntime]]:
    """Build the new rule set; returns it and the runtimes that the previous set had and this one dropped."""
    old = previous.services if previous else {}
    redactor = Redactor(rules.gateway.redact)
    services: dict[str, ServiceRuntime] = {}
    for name, spec in rules.services.items():
        kept = old.get(name)
        if kept is not None and kept.key == spec_key(spec):
            kept.use_redactor(redactor)
            services[name] = kept
        else:
            services[name] = ServiceRuntime(spec, credential_context.for_service(spec), redactor)
    dropped = [rt for name, rt in old.items() if services.get(name) is not rt]
    for runtime in services.values():
        for secret in runtime.secrets():
            redactor.add_secret(secret)
    for app in rules.apps.values():
        if app.secret is not None:
            redactor.add_secret(app.secret.get_secret_value())
    compiled = Compiled(rules, Router(rules), AppDirectory(rules.apps), services, redactor)
    return compiled, dropped
