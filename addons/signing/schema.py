"""`signing:` of a service (SPEC 6). Key material is parsed at load, so a bad key is a rule error."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from addons.rules.fields import Model, Secret

DEFAULT_STRING_TO_SIGN = "{method}\n{path}\n{timestamp}\n{nonce}\n{body_sha256}"


class HmacSha256Signing(Model):
    type: Literal["hmac_sha256"]
    secret: Secret
    header: str = "X-Signature"
    timestamp_header: str = "X-Timestamp"
    nonce_header: str = "X-Nonce"
    string_to_sign: str = DEFAULT_STRING_TO_SIGN


class AlipayRsa2Signing(Model):
    type: Literal["alipay_rsa2"]
    app_id: str
    private_key: Secret
    alipay_public_key: Secret | None = None


class AwsSigV4Signing(Model):
    type: Literal["aws_sigv4"]
    access_key_id: str
    secret_access_key: Secret
    session_token: Secret | None = None
    region: str
    service: str


class TencentTc3Signing(Model):
    type: Literal["tencent_tc3"]
    secret_id: str
    secret_key: Secret
    service: str
    region: str | None = None


SigningSpec = Annotated[
    HmacSha256Signing | AlipayRsa2Signing | AwsSigV4Signing | TencentTc3Signing,
    Field(discriminator="type"),
]
