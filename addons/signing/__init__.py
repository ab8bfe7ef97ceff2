"""Provider request signers (SPEC 6 `signing:`), free of mitmproxy so they can be tested alone.

A signer is built once per rule set from its spec (keys parsed, HMAC keys prepared) and then
called on every attempt, right before sending: after credentials are injected and the body is
final, so timestamps and nonces are fresh for each retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from addons.outbound import OutboundRequest
from addons.signing.alipay_rsa2 import AlipayRsa2Signer
from addons.signing.aws_sigv4 import AwsSigV4Signer
from addons.signing.hmac_sha256 import HmacSha256Signer
from addons.signing.schema import (
    AlipayRsa2Signing,
    AwsSigV4Signing,
    HmacSha256Signing,
    SigningSpec,
    TencentTc3Signing,
)
from addons.signing.tencent_tc3 import TencentTc3Signer
from addons.signing.wechatpay_v3 import WechatPayV3Credentials, WechatPayV3Signer


@runtime_checkable
class Signer(Protocol):
    def sign(self, req: OutboundRequest, now: float) -> None:
        """Sign `req` in place for one attempt at unix time `now`; replaces what the caller sent.

        May raise GatewayError (-2005) when the caller's request cannot be signed as it is.
        """

    def verify_response(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        """Raise GatewayError(-1004) when the provider's answer carries a bad signature."""


def make_signer(spec: SigningSpec, name: str | None = None) -> Signer:
    """The signer for a service's `signing:` spec.

    `name` (the service's name) prefixes messages shown to callers; by default the signing type.
    """
    match spec:
        case HmacSha256Signing():
            return HmacSha256Signer(spec)
        case AlipayRsa2Signing():
            return AlipayRsa2Signer(spec, name or "alipay")
        case AwsSigV4Signing():
            return AwsSigV4Signer(spec)
        case TencentTc3Signing():
            return TencentTc3Signer(spec)
    raise TypeError(f"no signer for {type(spec).__name__}")


def credential_signer(credentials: object, name: str | None = None) -> Signer | None:
    """The signer of credentials that are a request signature (wechatpay_v3), else None."""
    if isinstance(credentials, WechatPayV3Credentials):
        return WechatPayV3Signer(credentials, name or "wechatpay")
    return None


__all__ = [
    "AlipayRsa2Signer",
    "AwsSigV4Signer",
    "HmacSha256Signer",
    "Signer",
    "SigningSpec",
    "TencentTc3Signer",
    "WechatPayV3Signer",
    "credential_signer",
    "make_signer",
]
