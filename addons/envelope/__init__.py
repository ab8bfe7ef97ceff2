"""Envelope adapters (SPEC 5): read a provider's answer, decide its gateway code, render the envelope.

An adapter is built once per rule (`make_adapter`) and its `classify` runs on every call. Order of
judgement, the same for every adapter:

1. The provider's HTTP status: 2xx and 3xx go on to the body rules; 401/403 are -1002, 400/404/422
   -2005, 429 -1005, 503 -1003, anything else (other 4xx, other 5xx, 1xx) -1000. The body of such an
   answer is read only to fill `detail` for the log.
2. The body rules of the adapter (wechat, alipay, json, xml, raw).
3. A body the adapter cannot read (bad JSON or XML, the wrong shape, an empty body where one is
   needed, undecodable bytes, an entity bomb) is -1004. `classify` never raises.

The caller sees `Verdict.message`: the gateway's own sentence, `service.method: ` first, naming the
provider's code where it helps (`errcode 40001`) but never repeating the provider's text, with two
deliberate exceptions for errors the caller must fix itself (-2xxx): Alipay's `sub_msg` (SPEC 5) and
a json envelope's `message_field`. Those are cut short, stripped of control characters and redacted.
The provider's own words go to `Verdict.detail`, for the access log only (redacted there).

The package: `base` (the answer, the verdict, the status-first judgement every adapter shares), one
module per adapter (`wechat`, `alipay`, `json`, `xml`, `raw`, `wechatpay_v3`), `schema` (a rule's
`envelope:`), `registry` (`make_adapter`), `render` (the envelope body). Free of mitmproxy.
"""

from __future__ import annotations

from addons.envelope.alipay import AlipayAdapter
from addons.envelope.base import (
    SPLICED,
    Adapter,
    ProviderAnswer,
    SplicedVerdict,
    Unreadable,
    Verdict,
    sentence,
)
from addons.envelope.json import JsonAdapter
from addons.envelope.raw import RawAdapter
from addons.envelope.registry import make_adapter
from addons.envelope.render import render
from addons.envelope.schema import EnvelopeSpec, JsonEnvelope, NamedEnvelope
from addons.envelope.wechat import WechatAdapter
from addons.envelope.wechatpay_v3 import WechatPayV3Adapter
from addons.envelope.xml import XmlAdapter

__all__ = [
    "SPLICED",
    "Adapter",
    "AlipayAdapter",
    "EnvelopeSpec",
    "JsonAdapter",
    "JsonEnvelope",
    "NamedEnvelope",
    "ProviderAnswer",
    "RawAdapter",
    "SplicedVerdict",
    "Unreadable",
    "Verdict",
    "WechatAdapter",
    "WechatPayV3Adapter",
    "XmlAdapter",
    "make_adapter",
    "render",
    "sentence",
]
