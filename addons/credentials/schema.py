"""`credentials:` of a service (SPEC 6)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from addons.rules.fields import Duration, Model, Secret


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
    token_url: str | None = None  # default: <upstream.url>/cgi-bin/token
    refresh_before: Duration = 300.0  # refresh this long before expiry (WeChat's overlap is 5 min)


class OAuth2ClientCredentials(Model):
    type: Literal["oauth2_client_credentials"]
    token_url: str
    client_id: str
    client_secret: Secret
    scope: str | None = None
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    refresh_before: Duration = 60.0


CredentialsSpec = Annotated[
    NoCredentials | StaticCredentials | WechatTokenCredentials | OAuth2ClientCredentials,
    Field(discriminator="type"),
]
