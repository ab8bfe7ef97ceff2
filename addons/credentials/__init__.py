"""Provider credentials (SPEC 6): what the gateway injects so that applications hold no secret.

Every credential replaces what the app itself sent (never merges), and is applied to the outbound
request only: the caller's request as mitmproxy stores and shows it never carries an injected secret."""

from __future__ import annotations

from typing import Protocol

from addons.credentials.schema import (
    CredentialsSpec,
    NoCredentials,
    OAuth2ClientCredentials,
    StaticCredentials,
    WechatPayV3Credentials,
    WechatTokenCredentials,
)
from addons.credentials.services import TokenServices
from addons.outbound import OutboundRequest


class Credential(Protocol):
    async def apply(self, req: OutboundRequest) -> None:
        """Inject the credential; raises GatewayError (-1002 token refused, -3001 misconfigured)."""

    def rejected(self, status: int, provider_code: str | None) -> bool:
        """Whether this answer means the injected token is no longer valid (refresh and retry once)."""

    async def refresh(self) -> None:
        """Drop the cached token and fetch a new one (one refresh at a time across the fleet)."""

    def local_answer(self, path: str, http_method: str) -> bytes | None:
        """A body the gateway answers itself instead of calling the provider (WeChat's token endpoint)."""

    def secrets(self) -> list[str]:
        """Values that must never be written anywhere (registered with the redactor)."""

    async def close(self) -> None: ...


class NoCredential:
    async def apply(self, req: OutboundRequest) -> None:
        return None

    def rejected(self, status: int, provider_code: str | None) -> bool:
        return False

    async def refresh(self) -> None:
        return None

    def local_answer(self, path: str, http_method: str) -> bytes | None:
        return None

    def secrets(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None


class StaticCredential(NoCredential):
    def __init__(self, spec: StaticCredentials) -> None:
        self.spec = spec
        self.value = spec.prefix + spec.value.get_secret_value()

    async def apply(self, req: OutboundRequest) -> None:
        if self.spec.header is not None:
            req.headers.popall(self.spec.header, None)
            req.headers[self.spec.header] = self.value
        elif self.spec.query is not None:
            req.set_query(self.spec.query, self.value)

    def secrets(self) -> list[str]:
        return [self.spec.value.get_secret_value()]


class SignatureCredential(NoCredential):
    """Credentials that are a request signature (wechatpay_v3): the service's signer applies them,
    last, on every attempt (see `addons.signing.credential_signer`); this only names the secrets."""

    def __init__(self, secrets: list[str]) -> None:
        self._secrets = secrets

    def secrets(self) -> list[str]:
        return list(self._secrets)


def make_credential(spec: CredentialsSpec, services: TokenServices) -> Credential:
    """The credential of one service; `services` is what a token credential gets from the gateway."""
    if isinstance(spec, NoCredentials):
        return NoCredential()
    if isinstance(spec, WechatPayV3Credentials):
        return SignatureCredential([spec.private_key.get_secret_value()])
    if isinstance(spec, StaticCredentials):
        return StaticCredential(spec)
    # Imported here: the token credentials read answers with the forwarder's bounded decoder.
    if isinstance(spec, WechatTokenCredentials):
        from addons.credentials.wechat_token import WechatToken

        return WechatToken(spec, services)
    if isinstance(spec, OAuth2ClientCredentials):
        from addons.credentials.oauth2_token import OAuth2Token

        return OAuth2Token(spec, services)
    raise ValueError(f"unknown credentials type {getattr(spec, 'type', spec)!r}")
