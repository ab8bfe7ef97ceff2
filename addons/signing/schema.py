"""`signing:` of a service (SPEC 6). Key material is parsed at load, so a bad key is a rule error."""

from __future__ import annotations

from string import Formatter
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, SecretStr, TypeAdapter, field_validator, model_validator

from addons.rules.fields import Model, Secret
from addons.signing.alipay_rsa2 import load_private_key, load_public_key

# Every signing spec holds a secret, and pydantic's error text repeats the rejected input: a key
# that fails to parse must not end up in a log or /status through that text. This config covers a
# spec validated on its own; inside a larger model that model's config decides, hence also the
# key checks below.
HIDE_INPUT = ConfigDict(hide_input_in_errors=True)


def _private_key_ok(value: SecretStr) -> SecretStr:
    load_private_key(value.get_secret_value())
    return value


def _public_key_ok(value: SecretStr) -> SecretStr:
    load_public_key(value.get_secret_value())
    return value


# The key checks run as a nested validation whose input is the SecretStr: an error raised there
# reports that input, shown as '**********', instead of the key text, in whatever model holds it.
_PRIVATE_KEY: TypeAdapter[SecretStr] = TypeAdapter(Annotated[SecretStr, AfterValidator(_private_key_ok)])
_PUBLIC_KEY: TypeAdapter[SecretStr] = TypeAdapter(Annotated[SecretStr, AfterValidator(_public_key_ok)])

DEFAULT_STRING_TO_SIGN = "{method}\n{path}\n{timestamp}\n{nonce}\n{body_sha256}"
# What `string_to_sign` may refer to: {path} is the path with its query, as sent.
STRING_TO_SIGN_FIELDS = frozenset({"method", "path", "timestamp", "nonce", "body_sha256", "host"})


def template_fields(template: str) -> set[str]:
    """The placeholders of a `string_to_sign`; ValueError for unknown ones or broken braces."""
    try:
        names = {name for _, name, _, _ in Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(
            f"string_to_sign is not a valid template ({exc}); write a literal brace as {{{{ or }}}}"
        ) from None
    unknown = names - STRING_TO_SIGN_FIELDS
    if unknown:
        shown = sorted("{" + name + "}" for name in unknown)
        raise ValueError(
            f"string_to_sign uses unknown placeholder(s) {', '.join(shown)}; "
            f"known: {', '.join(sorted(STRING_TO_SIGN_FIELDS))}"
        )
    return names


class HmacSha256Signing(Model):
    model_config = HIDE_INPUT

    type: Literal["hmac_sha256"]
    secret: Secret
    header: str = "X-Signature"
    timestamp_header: str = "X-Timestamp"
    nonce_header: str = "X-Nonce"
    string_to_sign: str = DEFAULT_STRING_TO_SIGN

    @field_validator("string_to_sign")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        # A typo such as {body_sha265} must be a rule error at load, not a KeyError on every call.
        template_fields(value)
        return value

    @model_validator(mode="after")
    def _distinct_headers(self) -> HmacSha256Signing:
        names = [self.header.lower(), self.timestamp_header.lower(), self.nonce_header.lower()]
        if len(set(names)) != 3 or not all(names):
            raise ValueError("header, timestamp_header and nonce_header must be three different header names")
        return self


class AlipayRsa2Signing(Model):
    model_config = HIDE_INPUT

    type: Literal["alipay_rsa2"]
    app_id: str
    private_key: Secret
    alipay_public_key: Secret | None = None

    # Keys are parsed at load so a bad key is a rule error with a clear message, never a failure at
    # call time. These run after `file:` resolution; neither the message nor the reported input
    # repeats the key.
    @field_validator("private_key")
    @classmethod
    def _private_key_parses(cls, value: SecretStr) -> SecretStr:
        return _PRIVATE_KEY.validate_python(value)

    @field_validator("alipay_public_key")
    @classmethod
    def _public_key_parses(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else _PUBLIC_KEY.validate_python(value)


class AwsSigV4Signing(Model):
    model_config = HIDE_INPUT

    type: Literal["aws_sigv4"]
    access_key_id: str
    secret_access_key: Secret
    session_token: Secret | None = None
    region: str
    service: str


class TencentTc3Signing(Model):
    model_config = HIDE_INPUT

    type: Literal["tencent_tc3"]
    secret_id: str
    secret_key: Secret
    service: str
    region: str | None = None


SigningSpec = Annotated[
    HmacSha256Signing | AlipayRsa2Signing | AwsSigV4Signing | TencentTc3Signing,
    Field(discriminator="type"),
]
