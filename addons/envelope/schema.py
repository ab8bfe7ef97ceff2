"""A rule's `envelope:` (SPEC 5): a named adapter, or `json` with its success/message/data fields."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from addons.rules.fields import Model


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
