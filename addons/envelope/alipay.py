"""The `alipay` envelope adapter (SPEC 5): Alipay's `*_response` objects."""

from __future__ import annotations

from typing import Any

from addons.envelope.base import (
    ProviderAnswer,
    Unreadable,
    Verdict,
    _Base,
    _clip,
    _json_object,
    _provider_words,
    _success,
    sentence,
)
from addons.errors import Code
from addons.redact import Redactor


class AlipayAdapter(_Base):
    """`alipay`: the one `*_response` object (or `error_response`); `code` "10000" is success and
    `data` is that object without `code`/`msg`. The top-level `sign` is the response signature
    (checked by the signing layer), never data."""

    CODES: dict[str, int] = {
        "20000": Code.UPSTREAM_UNAVAILABLE,  # service unavailable
        "20001": Code.UPSTREAM_AUTH,  # insufficient authorization (bad auth token)
        "40006": Code.UPSTREAM_AUTH,  # the app lacks the permission
        "40001": Code.CALLER_INVALID,  # missing parameter
        "40002": Code.CALLER_INVALID,  # invalid parameter
        "40004": Code.CALLER_INVALID,  # business failure (sub_code says which)
    }

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def _body(self, answer: ProviderAnswer, rule: str) -> Verdict:
        name, obj = _response_object(_json_object(answer))
        raw_code = obj.get("code")
        if raw_code is None or isinstance(raw_code, bool | dict | list):
            raise Unreadable(f"{name} has no code")
        code_str = str(raw_code)
        if code_str == "10000":
            return _success({k: v for k, v in obj.items() if k != "code" and k != "msg"})
        return self._refused(rule, code_str, obj)

    def _refused(self, rule: str, code_str: str, obj: dict[str, Any]) -> Verdict:
        sub_code, sub_msg = obj.get("sub_code"), obj.get("sub_msg")
        provider_code = f"{code_str}/{sub_code}" if sub_code else code_str
        code = self.CODES.get(code_str, Code.UPSTREAM_ERROR)
        suffix = f" (code {code_str}" + (f", sub_code {_clip(str(sub_code), 80)})" if sub_code else ")")
        if code == Code.CALLER_INVALID and (sub_msg or sub_code):
            # SPEC 5: the caller is told what Alipay found wrong with its request.
            suffix += ": " + _provider_words(sub_msg or sub_code, self.redactor)
        detail = f"code={code_str} msg={obj.get('msg', '')}"
        if sub_code or sub_msg:
            detail += f" sub_code={sub_code or ''} sub_msg={sub_msg or ''}"
        return Verdict(int(code), sentence(rule, code, suffix), None, _clip(detail), provider_code)


def _response_object(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The answer's one `*_response` object and its name."""
    names = [k for k in body if k.endswith("_response")]
    # An error_response wins over anything else: it is how Alipay reports a call it refused.
    name = "error_response" if "error_response" in body else (names[0] if len(names) == 1 else None)
    if name is None:
        raise Unreadable("no single *_response object" if names else "no *_response object")
    obj = body[name]
    if not isinstance(obj, dict):
        raise Unreadable(f"{name} is not an object")
    return name, obj
