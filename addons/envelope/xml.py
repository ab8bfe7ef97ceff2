"""The `xml` envelope adapter (SPEC 5): WeChat Pay v2 style XML answers, parsed with defusedxml."""

from __future__ import annotations

import json
import re
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as xml_fromstring

from addons.envelope.base import ProviderAnswer, Unreadable, Verdict, _Base, _clip, _success, sentence
from addons.errors import Code


class XmlAdapter(_Base):
    """`xml`: WeChat Pay v2 style `<xml><return_code><![CDATA[SUCCESS]]></return_code>...</xml>`.

    Success: `return_code` SUCCESS and `result_code` SUCCESS (a `result_code` that is absent, as in a
    few v2 answers that only report the channel, counts as SUCCESS). `data` is a flat dict of the
    root's child elements, text as is, without `return_code`, `return_msg`, `result_code` (the
    envelope's `code` replaces them) and `sign` (a signature, checked by the signing layer, never
    data); an element with children becomes a nested dict, a repeated element a list.

    Failure: the err_code (or a return_msg that names it) decides: signature and authorization
    errors (SIGNERROR, NOAUTH, APPID_NOT_EXIST, MCHID_NOT_EXIST, APPID_MCHID_NOT_MATCH, "签名错误")
    -1002; SYSTEMERROR and BIZERR_NEED_RETRY -1003; FREQUENCY_LIMITED -1005; anything else -2005.
    Parsed with defusedxml, DTDs refused: entity bombs and external entities are -1004.
    """

    AUTH = frozenset({"SIGNERROR", "NOAUTH", "APPID_NOT_EXIST", "MCHID_NOT_EXIST", "APPID_MCHID_NOT_MATCH",
                      "INVALID_SIGN", "SIGN_ERROR"})
    BUSY = frozenset({"SYSTEMERROR", "SYSTEM_ERROR", "BIZERR_NEED_RETRY"})
    RATE = frozenset({"FREQUENCY_LIMITED", "FREQ_LIMIT"})
    NOT_DATA = frozenset({"return_code", "return_msg", "result_code", "sign"})
    _TOKEN = re.compile(r"[A-Z][A-Z0-9_]+")
    # return_msg is free text ("签名错误", "sign error", "NOAUTH"): words that give the kind away.
    _AUTH_WORDS = re.compile(r"签名|(?<![A-Za-z])sign|noauth", re.I)
    _BUSY_WORDS = re.compile(r"systemerror|系统繁忙|系统错误", re.I)

    def _body(self, answer: ProviderAnswer, rule: str) -> Verdict:
        root = self._parse(answer.body)
        fields = _children(root)
        return_code = fields.get("return_code")
        if not isinstance(return_code, str):
            raise Unreadable("no return_code")
        result_code = fields.get("result_code", "SUCCESS")
        if return_code.strip() == "SUCCESS" and _as_text(result_code).strip() == "SUCCESS":
            return _success({k: v for k, v in fields.items() if k not in self.NOT_DATA})
        return_msg = _as_text(fields.get("return_msg"))
        err_code = _as_text(fields.get("err_code")).strip()
        if return_code.strip() != "SUCCESS":
            # Channel failure: no err_code; the return_msg is often a code word, or Chinese text.
            token = return_msg.strip() if self._TOKEN.fullmatch(return_msg.strip()) else ""
            provider_code = err_code or token or "FAIL"
            code = self._judge(err_code or token, return_msg)
        else:
            provider_code = err_code or _as_text(result_code).strip() or "FAIL"
            code = self._judge(err_code, return_msg)
        detail = f"return_code={return_code} return_msg={return_msg}"
        if return_code.strip() == "SUCCESS":
            detail += f" result_code={_as_text(result_code)} err_code={err_code}" \
                      f" err_code_des={_as_text(fields.get('err_code_des'))}"
        return Verdict(code, sentence(rule, code, f" (err_code {_clip(provider_code, 80)})"), None,
                       _clip(detail), provider_code)

    def _judge(self, token: str, return_msg: str) -> int:
        if token in self.AUTH or self._AUTH_WORDS.search(return_msg):
            return Code.UPSTREAM_AUTH
        if token in self.BUSY or self._BUSY_WORDS.search(return_msg):
            return Code.UPSTREAM_UNAVAILABLE
        if token in self.RATE:
            return Code.UPSTREAM_RATE_LIMITED
        return Code.CALLER_INVALID

    @staticmethod
    def _parse(body: bytes) -> Element:
        if not body.strip():
            raise Unreadable("empty body")
        try:
            return xml_fromstring(body, forbid_dtd=True)
        except DefusedXmlException as exc:
            raise Unreadable("XML with a DTD or entities", type(exc).__name__) from None
        except (ParseError, ValueError, RecursionError) as exc:
            raise Unreadable("not XML", f"{type(exc).__name__}: {exc}") from None


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else json.dumps(value, ensure_ascii=False)


def _children(element: Element, depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    repeated: set[str] = set()  # tags whose value is a list built here (appended to: linear time)
    for child in element:
        if depth < 32 and len(child):
            value: Any = _children(child, depth + 1)
        else:
            value = child.text or ""
        tag = child.tag if isinstance(child.tag, str) else str(child.tag)
        if tag in repeated:
            out[tag].append(value)
        elif tag in out:
            out[tag] = [out[tag], value]
            repeated.add(tag)
        else:
            out[tag] = value
    return out

