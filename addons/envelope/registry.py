"""Which adapter reads a rule's answers: one factory per envelope kind."""

from __future__ import annotations

from collections.abc import Callable

from addons.envelope.alipay import AlipayAdapter
from addons.envelope.base import Adapter
from addons.envelope.json import JsonAdapter
from addons.envelope.raw import RawAdapter
from addons.envelope.schema import EnvelopeSpec, JsonEnvelope, NamedEnvelope
from addons.envelope.wechat import WechatAdapter
from addons.envelope.wechatpay_v3 import WechatPayV3Adapter
from addons.envelope.xml import XmlAdapter
from addons.redact import Redactor

_SHARED_REDACTOR = Redactor()

# Each kind's adapter, given the redactor that cleans the provider sentences a message may quote.
ADAPTERS: dict[str, Callable[[Redactor], Adapter]] = {
    "wechat": lambda redactor: WechatAdapter(),
    "alipay": AlipayAdapter,
    "json": lambda redactor: JsonAdapter(None, redactor),
    "xml": lambda redactor: XmlAdapter(),
    "raw": lambda redactor: RawAdapter(),
    "wechatpay_v3": lambda redactor: WechatPayV3Adapter(),
}


def make_adapter(spec: EnvelopeSpec | None, redactor: Redactor | None = None) -> Adapter:
    """The adapter for a rule's `envelope:`; built once when the rules load. `redactor` cleans the
    provider sentences some messages quote (Alipay's sub_msg): pass the gateway's, which knows the
    injected secrets; by default a plain one."""
    redactor = redactor or _SHARED_REDACTOR
    if spec is None:
        spec = "json"
    if isinstance(spec, JsonEnvelope):
        return JsonAdapter(spec, redactor)
    if not isinstance(spec, str | NamedEnvelope):
        raise ValueError(f"unknown envelope {spec!r}")
    kind = spec if isinstance(spec, str) else spec.type
    factory = ADAPTERS.get(kind)
    if factory is None:
        raise ValueError(f"unknown envelope {kind!r}")
    return factory(redactor)
