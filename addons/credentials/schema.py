"""`credentials:` of a service (SPEC 6)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, model_validator

from addons.rules.fields import Duration, Model, Secret
from addons.signing.wechatpay_v3.schema import WechatPayV3Credentials as WechatPayV3Credentials


def _check_token_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"token_url {value!r} is not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"token_url {value!r} has an invalid port") from None
    return value


TokenURL = Annotated[str, AfterValidator(_check_token_url)]


class NoCredentials(Model):
    type: Literal["none"] = "none"


class StaticCredentials(Model):
    """A fixed key in a header or a query parameter; the app's own value is replaced."""

    type: Literal["static"]
    header: str | None = None
    query: str | None = None
    value: Secret
    prefix: str = ""

    @model_validator(mode="after")
    def _one_place(self) -> StaticCredentials:
        if (self.header is None) == (self.query is None):
            raise ValueError("static credentials need exactly one of 'header' or 'query'")
        return self


class WechatTokenCredentials(Model):
    type: Literal["wechat_token"]
    app_id: str
    secret: Secret
    token_url: TokenURL | None = None  # default: <upstream.url>/cgi-bin/token
    refresh_before: Duration = 300.0  # refresh this long before expiry (WeChat's overlap is 5 min)
    timeout: Duration = 5.0  # one token fetch, connect through last byte


class OAuth2ClientCredentials(Model):
    type: Literal["oauth2_client_credentials"]
    token_url: TokenURL
    client_id: str
    client_secret: Secret
    scope: str | None = None
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    refresh_before: Duration = 60.0
    timeout: Duration = 5.0  # one token fetch, connect through last byte


CredentialsSpec = Annotated[
    NoCredentials | StaticCredentials | WechatTokenCredentials | OAuth2ClientCredentials | WechatPayV3Credentials,
    Field(discriminator="type"),
]
