"""`credentials: {type: wechatpay_v3}` of a service (SPEC 17). Every key is parsed at load, so a key
that does not parse is a rule error at its line, never a failure on the first payment."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import AfterValidator, BeforeValidator, SecretStr, TypeAdapter, field_validator, model_validator

from addons.rules.fields import FileText, Model, Secret
from addons.signing.alipay_rsa2 import _normalise_key_text, load_private_key, load_public_key

_MCH_ID = re.compile(r"^[0-9]{1,32}$")
_SERIAL = re.compile(r"^[0-9A-Fa-f]{1,64}$")


def _as_text(value: Any) -> Any:
    # YAML reads `mch_id: 1900000109` as a number; a merchant id is an identifier, kept as text.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _check_mch_id(value: str) -> str:
    if not _MCH_ID.match(value):
        raise ValueError("mch_id must be the merchant number (digits only)")
    return value


def _check_serial(value: str) -> str:
    if not _SERIAL.match(value):
        raise ValueError("serial_no must be the merchant API certificate's serial number (hexadecimal)")
    return value.upper()


def merchant_private_key(text: str) -> rsa.RSAPrivateKey:
    try:
        return load_private_key(text)
    except ValueError as exc:
        reason = "it is encrypted; give it unencrypted" if "encrypted" in str(exc) else "it does not parse"
        raise ValueError(
            f"private_key is not a usable RSA private key ({reason}); expected the merchant's "
            "apiclient_key.pem (PKCS#8 or PKCS#1 PEM)"
        ) from None


def platform_public_key(text: str) -> rsa.RSAPublicKey:
    try:
        return load_public_key(text)
    except ValueError:
        raise ValueError(
            "platform_public_key is not a usable RSA public key; expected WeChat Pay's public key "
            "PEM (pub_key.pem, `-----BEGIN PUBLIC KEY-----`)"
        ) from None


def platform_certificate(text: str) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(_normalise_key_text(text).encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise ValueError(
            "platform_certificates: an entry is not a PEM certificate (`-----BEGIN CERTIFICATE-----`)"
        ) from None
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        raise ValueError("platform_certificates: a certificate does not hold an RSA key")
    return cert


def certificate_serial(cert: x509.Certificate) -> str:
    """The serial as WeChat Pay writes it in `Wechatpay-Serial`: uppercase hexadecimal."""
    return f"{cert.serial_number:X}"


def _private_key_ok(value: SecretStr) -> SecretStr:
    merchant_private_key(value.get_secret_value())
    return value


# As in signing/schema.py: the check runs as a nested validation whose input is the SecretStr, so an
# error reports '**********', never the key text.
_PRIVATE_KEY: TypeAdapter[SecretStr] = TypeAdapter(Annotated[SecretStr, AfterValidator(_private_key_ok)])

MchId = Annotated[str, BeforeValidator(_as_text), AfterValidator(_check_mch_id)]
Serial = Annotated[str, BeforeValidator(_as_text), AfterValidator(_check_serial)]


class WechatPayV3Credentials(Model):
    """The merchant's identity and key (signs every request), and WeChat Pay's keys (verify every
    answer): its public key with its id (`PUB_KEY_ID_...`), or its platform certificates, or both
    while a merchant moves from certificates to the public key."""

    type: Literal["wechatpay_v3"]
    mch_id: MchId
    serial_no: Serial
    private_key: Secret
    platform_public_key: FileText | None = None
    platform_public_key_id: str | None = None
    platform_certificates: list[FileText] = []

    @field_validator("private_key")
    @classmethod
    def _private_key_parses(cls, value: SecretStr) -> SecretStr:
        return _PRIVATE_KEY.validate_python(value)

    @field_validator("platform_public_key")
    @classmethod
    def _public_key_parses(cls, value: str | None) -> str | None:
        if value is not None:
            platform_public_key(value)
        return value

    @field_validator("platform_public_key_id", mode="before")
    @classmethod
    def _id_text(cls, value: Any) -> Any:
        return _as_text(value)

    @field_validator("platform_certificates")
    @classmethod
    def _certificates_parse(cls, value: list[str]) -> list[str]:
        for text in value:
            platform_certificate(text)
        return value

    @model_validator(mode="after")
    def _answer_keys(self) -> WechatPayV3Credentials:
        if (self.platform_public_key is None) != (self.platform_public_key_id is None):
            raise ValueError("platform_public_key and platform_public_key_id go together (the id is "
                             "the PUB_KEY_ID_... WeChat Pay names the key with)")
        if self.platform_public_key is None and not self.platform_certificates:
            raise ValueError("wechatpay_v3 needs platform_public_key (with platform_public_key_id) or "
                             "platform_certificates: without them no answer can be verified")
        return self
