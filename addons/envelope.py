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
"""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as xml_fromstring

from addons import jsonfast
from addons.errors import Code, source_of
from addons.redact import Redactor
from addons.rules.schema import EnvelopeSpec, JsonEnvelope, NamedEnvelope

__all__ = [
    "Adapter",
    "AlipayAdapter",
    "JsonAdapter",
    "ProviderAnswer",
    "RawAdapter",
    "Verdict",
    "WechatAdapter",
    "XmlAdapter",
    "make_adapter",
    "render",
]

DETAIL_LIMIT = 500
PROVIDER_TEXT_LIMIT = 200  # of a provider's sentence quoted in a caller-facing message


@dataclass
class ProviderAnswer:
    status: int
    headers: Mapping[str, str]  # case-insensitive (a multidict.CIMultiDict in practice)
    body: bytes  # content-encoding already removed


@dataclass
class Verdict:
    code: int
    message: str  # shown to the caller
    data: Any
    detail: str = ""  # the provider's raw error, for the log only
    provider_code: str | None = None  # the provider's own code: "40001", "40004/ACQ.TRADE_NOT_EXIST"
    # `data` as the provider's own JSON text, when data is its body unchanged: spliced into the
    # envelope instead of encoding `data` again. A step that changes `data` must drop it.
    data_json: bytes | None = None

    def __post_init__(self) -> None:
        self.code = int(self.code)  # a plain int, not a Code member, wherever it ends up

    @property
    def ok(self) -> bool:
        return self.code == 0

    @property
    def result_data(self) -> Any:
        """What the forwarder carries as the call's data: `data`, or SPLICED when the envelope is to
        hold the provider's bytes (`data_json`) and nothing needs them parsed."""
        return self.data


SPLICED = object()
_UNPARSED = object()


class SplicedVerdict(Verdict):
    """A success whose data is the provider's JSON body unchanged: its bytes go into the envelope as
    they are, and `data` is parsed only if something reads it."""

    def __init__(self, data_json: bytes) -> None:
        super().__init__(0, "success", _UNPARSED, data_json=data_json)

    @property  # type: ignore[override]
    def data(self) -> Any:
        value = self.__dict__.get("_data", _UNPARSED)
        if value is _UNPARSED:
            assert self.data_json is not None
            fast = jsonfast.decode_utf8(self.data_json)
            value = fast[0] if fast is not jsonfast.NOT_FAST else json.loads(self.data_json)  # type: ignore[index]
            self.__dict__["_data"] = value
        return value

    @data.setter
    def data(self, value: Any) -> None:
        self.__dict__["_data"] = value

    @property
    def result_data(self) -> Any:
        return SPLICED if self.__dict__.get("_data", _UNPARSED) is _UNPARSED else self.data


class Adapter(Protocol):
    def classify(self, answer: ProviderAnswer, rule: str) -> Verdict: ...


# The gateway's sentence for each code an adapter can produce.
SENTENCES: dict[int, str] = {
    Code.UPSTREAM_ERROR: "provider answered with an error the gateway could not classify",
    Code.UPSTREAM_TIMEOUT: "provider timed out",
    Code.UPSTREAM_AUTH: "provider rejected the gateway's credentials or signature",
    Code.UPSTREAM_UNAVAILABLE: "provider is busy or unavailable",
    Code.UPSTREAM_UNREADABLE: "provider answer is unreadable",
    Code.UPSTREAM_RATE_LIMITED: "provider rate-limited the gateway",
    Code.CALLER_INVALID: "provider rejected the request as invalid",
}

# Provider HTTP statuses that say more than "an error"; every other status outside 2xx/3xx is -1000.
HTTP_CODES: dict[int, int] = {
    401: Code.UPSTREAM_AUTH,
    403: Code.UPSTREAM_AUTH,
    400: Code.CALLER_INVALID,
    404: Code.CALLER_INVALID,
    422: Code.CALLER_INVALID,
    429: Code.UPSTREAM_RATE_LIMITED,
    503: Code.UPSTREAM_UNAVAILABLE,
}

UNREADABLE = int(Code.UPSTREAM_UNREADABLE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_SHARED_REDACTOR = Redactor()


class Unreadable(Exception):
    """The body is not what the adapter needs; `reason` is the gateway's words, safe for the caller."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _clip(text: str, limit: int = DETAIL_LIMIT) -> str:
    """One line, at most `limit` characters: fit for a log field."""
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _snippet(body: bytes) -> str:
    return _clip(body[:DETAIL_LIMIT * 2].decode("utf-8", "replace"))


def sentence(rule: str, code: int, suffix: str = "") -> str:
    return f"{rule}: {SENTENCES.get(code, 'provider reported an error')}{suffix}"


def _charset(headers: Mapping[str, str]) -> str | None:
    try:
        content_type = headers.get("content-type") or ""
    except Exception:  # a foreign mapping type must not turn into a crash
        return None
    _, found, rest = content_type.lower().partition("charset=")
    if not found:
        return None
    return rest.split(";", 1)[0].strip().strip("\"'") or None


def _text(answer: ProviderAnswer) -> str:
    """The body as text, by its declared charset (UTF-8 when none; a UTF-8 BOM is dropped)."""
    charset = _charset(answer.headers)
    if charset is None or charset in ("utf-8", "utf8"):
        charset = "utf-8-sig"
    else:
        try:
            # rot13 and friends are codecs too, but not text encodings
            if not getattr(codecs.lookup(charset), "_is_text_encoding", True):
                raise LookupError(charset)
        except LookupError:
            raise Unreadable("unknown charset", f"charset={charset[:60]!r}") from None
    try:
        return answer.body.decode(charset)
    except UnicodeDecodeError:
        raise Unreadable(f"body is not valid {charset}") from None


def _no_nan(constant: str) -> Any:
    # NaN and Infinity are not JSON; letting them through would make the rendered envelope invalid.
    raise ValueError(f"{constant} is not JSON")


def _finite(literal: str) -> float | str:
    # A number beyond a float (1e999999) would become Infinity, which is not JSON: keep its text.
    value = float(literal)
    return value if math.isfinite(value) else literal


def _json(answer: ProviderAnswer) -> Any:
    return _json_with_text(answer)[0]


def _json_with_text(answer: ProviderAnswer) -> tuple[Any, bytes | None]:
    """The parsed body and, when it was read as UTF-8 by the fast decoder, its JSON text."""
    charset = _charset(answer.headers)
    if charset is None or charset in ("utf-8", "utf8"):
        fast = jsonfast.decode_utf8(answer.body)
        if fast is not jsonfast.NOT_FAST:
            return fast  # type: ignore[return-value]
    return _json_stdlib(answer), None


def _utf8_json_text(answer: ProviderAnswer) -> bytes | None:
    charset = _charset(answer.headers)
    if charset is None or charset in ("utf-8", "utf8"):
        return jsonfast.json_text(answer.body)
    return None


def _json_stdlib(answer: ProviderAnswer) -> Any:
    text = _text(answer)
    if not text.strip():
        raise Unreadable("empty body")
    try:
        return json.loads(text, parse_constant=_no_nan, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        raise Unreadable("not JSON", f"{type(exc).__name__}: {exc}") from None


def _json_object(answer: ProviderAnswer) -> dict[str, Any]:
    body = _json(answer)
    if not isinstance(body, dict):
        raise Unreadable(f"JSON {type(body).__name__} where an object was expected")
    return body


class _Base:
    """Status first, then the body rules of the subclass; nothing escapes as an exception."""

    def classify(self, answer: ProviderAnswer, rule: str) -> Verdict:
        try:
            status = int(answer.status)
            if not 200 <= status < 400:
                code = HTTP_CODES.get(status, Code.UPSTREAM_ERROR)
                detail, provider_code = self._error_detail(answer)
                detail = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
                message = sentence(rule, code, f" (HTTP {status})")
                return Verdict(code, message, None, _clip(detail), provider_code)
            return self._body(answer, rule)
        except Unreadable as exc:
            detail = f"{exc.reason}: {exc.detail}" if exc.detail else exc.reason
            return Verdict(UNREADABLE, sentence(rule, UNREADABLE, f" ({exc.reason})"), None,
                           _clip(f"{detail}; body: {_snippet(answer.body)}"))
        except Exception as exc:  # last resort: a provider's bytes must never take the call down
            detail = f"adapter failed: {type(exc).__name__}: {exc}; body: {_snippet(answer.body)}"
            return Verdict(UNREADABLE, sentence(rule, UNREADABLE), None, _clip(detail))

    def _body(self, answer: ProviderAnswer, rule: str) -> Verdict:
        raise NotImplementedError

    def _error_detail(self, answer: ProviderAnswer) -> tuple[str, str | None]:
        """What the log says about a non-2xx answer: the provider's code and words when the body
        reads as this adapter's format, else the start of the body."""
        if not answer.body:
            return "", None
        try:
            verdict = self._body(answer, "_")
        except Exception:
            return _snippet(answer.body), None
        if verdict.code != 0 and verdict.detail:
            return verdict.detail, verdict.provider_code
        return _snippet(answer.body), None


def _success(data: Any, data_json: bytes | None = None) -> Verdict:
    return Verdict(0, "success", data, data_json=data_json)


class RawAdapter(_Base):
    """`raw`: the body is the caller's, untouched (`data` is the body bytes); the verdict only says
    success or failure from the HTTP status, for the log, metrics and retries."""

    def _body(self, answer: ProviderAnswer, rule: str) -> Verdict:
        verdict = _success(answer.body)
        # The body stays the caller's, but a WeChat token error inside it must still let the gateway
        # refresh its token (40001/40014/42001): note the provider's code when there is one.
        if b'"errcode"' in answer.body[:256]:
            try:
                code = json.loads(answer.body).get("errcode")
            except (ValueError, AttributeError):
                code = None
            if isinstance(code, int) and code != 0:
                verdict.provider_code = str(code)
        return verdict

    def _error_detail(self, answer: ProviderAnswer) -> tuple[str, str | None]:
        return (_snippet(answer.body), None) if answer.body else ("", None)


class WechatAdapter(_Base):
    """`wechat`: `errcode` 0 or absent is success; `data` is the body without `errcode`/`errmsg`."""

    AUTH = frozenset({40001, 40014, 42001, 41001})  # invalid, malformed, expired, missing access_token
    RATE = frozenset({45009, 45011})  # daily API quota reached, API called too often
    BUSY = frozenset({-1})  # system busy

    def _body(self, answer: ProviderAnswer, rule: str) -> Verdict:
        body = _json_object(answer)
        raw_code = body.get("errcode", 0)
        if raw_code is None:
            raw_code = 0
        if isinstance(raw_code, bool) or not isinstance(raw_code, int | str):
            raise Unreadable("errcode is not a number", f"errcode={raw_code!r}")
        try:
            errcode = int(raw_code)
        except ValueError:
            raise Unreadable("errcode is not a number", f"errcode={raw_code!r}") from None
        if errcode == 0:
            return _success({k: v for k, v in body.items() if k != "errcode" and k != "errmsg"})
        if errcode in self.AUTH:
            code = Code.UPSTREAM_AUTH
        elif errcode in self.RATE:
            code = Code.UPSTREAM_RATE_LIMITED
        elif errcode in self.BUSY:
            code = Code.UPSTREAM_UNAVAILABLE
        else:
            code = Code.CALLER_INVALID
        return Verdict(int(code), sentence(rule, code, f" (errcode {errcode})"), None,
                       _clip(f"errcode={errcode} errmsg={body.get('errmsg', '')}"), str(errcode))


def _provider_words(text: Any, redactor: Redactor) -> str:
    """A provider's sentence made fit for a caller-facing message: one short line, redacted."""
    return redactor.text(_clip(str(text), PROVIDER_TEXT_LIMIT))


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
        body = _json_object(answer)
        names = [k for k in body if k.endswith("_response")]
        # An error_response wins over anything else: it is how Alipay reports a call it refused.
        name = "error_response" if "error_response" in body else (names[0] if len(names) == 1 else None)
        if name is None:
            raise Unreadable("no single *_response object" if names else "no *_response object")
        obj = body[name]
        if not isinstance(obj, dict):
            raise Unreadable(f"{name} is not an object")
        raw_code = obj.get("code")
        if raw_code is None or isinstance(raw_code, bool | dict | list):
            raise Unreadable(f"{name} has no code")
        code_str = str(raw_code)
        if code_str == "10000":
            return _success({k: v for k, v in obj.items() if k != "code" and k != "msg"})
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


class JsonAdapter(_Base):
    """`json`. Plain (no `success_field`): a 2xx/3xx answer is success and `data` is the parsed body
    (any JSON value; an empty body is `null`, as a 204 has none).

    With `success_field` (a dotted path such as `status` or `result.code`), the body must be an
    object holding that field: a value in `success_values` is success (compared by type, so `1`
    does not match `true`), a value found in `codes` takes that gateway code (`0` there also means
    success), anything else is -1000. A missing field is -1004: the answer does not follow the
    declared envelope. `data_field` (a dotted path, `null` when absent) picks the data, else the
    whole body is data. `message_field` is the provider's sentence: always in the log, and in the
    caller's message when the code is the caller's fault (-2xxx). `codes` needs `success_field`.
    """

    def __init__(self, spec: JsonEnvelope | None, redactor: Redactor) -> None:
        self.redactor = redactor
        spec = spec or JsonEnvelope(type="json")
        self.success_field = _path(spec.success_field)
        self.success_values = frozenset(k for k in map(_typed_key, spec.success_values) if k is not None)
        self.message_field = _path(spec.message_field)
        self.data_field = _path(spec.data_field)
        self.codes: dict[str, int] = {str(k): int(v) for k, v in spec.codes.items()}
        self.field_name = spec.success_field or ""

    def _body(self, answer: ProviderAnswer, rule: str) -> Verdict:
        if self.success_field is None:
            if not answer.body.strip():
                if self.data_field is not None:
                    raise Unreadable("empty body")
                return _success(None)
            if self.data_field is None:
                text = _utf8_json_text(answer)
                if text is not None:  # valid, and data is the body: nothing to parse
                    return SplicedVerdict(text)
            body, text = _json_with_text(answer)
            if self.data_field is None:
                return _success(body, text)
            if not isinstance(body, dict):
                raise Unreadable(f"JSON {type(body).__name__} where an object was expected")
            return _success(_lookup(body, self.data_field))
        body, text = _json_with_text(answer)
        if not isinstance(body, dict):
            raise Unreadable(f"JSON {type(body).__name__} where an object was expected")
        value = _lookup(body, self.success_field, _MISSING)
        if value is _MISSING:
            raise Unreadable(f"field {self.field_name[:60]!r} missing")
        key = _typed_key(value)
        provider_code = _code_string(value)
        code = 0 if key is not None and key in self.success_values else self.codes.get(
            provider_code, Code.UPSTREAM_ERROR)
        if code == 0:
            return _success(body, text) if self.data_field is None else _success(_lookup(body, self.data_field))
        message = _lookup(body, self.message_field) if self.message_field is not None else None
        suffix = f" ({self.field_name} {_clip(provider_code, 80)})"
        if message not in (None, "") and -3000 < code <= -2000:
            suffix += ": " + _provider_words(message, self.redactor)
        detail = f"{self.field_name}={provider_code}"
        if message not in (None, ""):
            detail += f" message={message}"
        return Verdict(code, sentence(rule, code, suffix), None, _clip(detail), provider_code)


_MISSING = object()


def _path(field: str | None) -> tuple[str, ...] | None:
    return None if field is None else tuple(field.split("."))


def _lookup(body: Any, path: tuple[str, ...], default: Any = None) -> Any:
    for part in path:
        if not isinstance(body, dict) or part not in body:
            return default
        body = body[part]
    return body


def _typed_key(value: Any) -> tuple[str, Any] | None:
    """A set key that keeps JSON types apart: Python says `True == 1` and `0 == False`, a provider
    does not."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    if value is None:
        return ("null", None)
    return None  # objects and arrays are never a success value


def _code_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    return _clip(json.dumps(value, ensure_ascii=False, default=str), 80)


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
    if kind == "wechat":
        return WechatAdapter()
    if kind == "alipay":
        return AlipayAdapter(redactor)
    if kind == "json":
        return JsonAdapter(None, redactor)
    if kind == "xml":
        return XmlAdapter()
    if kind == "raw":
        return RawAdapter()
    if kind == "wechatpay_v3":
        from addons.envelope_wechatpay_v3 import WechatPayV3Adapter  # it builds on this module

        return WechatPayV3Adapter()
    raise ValueError(f"unknown envelope {kind!r}")


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_default, allow_nan=False)
_ASCII_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=_default, allow_nan=False)


def _without_nan(value: Any) -> Any:
    """`value` with every NaN or infinite float as its text: JSON cannot carry them."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nan(v) for v in value]
    return value


def render(code: int, message: str, data: Any, request_id: str, data_json: bytes | None = None) -> bytes:
    """The envelope body (SPEC 5), compact UTF-8 JSON; `source` only on errors. `data_json`, when
    given, is `data` already encoded (the provider's own bytes) and is placed in as it is."""
    envelope: dict[str, Any] = {"code": int(code), "message": message,
                                "data": data if data_json is None else jsonfast.fragment(data_json),
                                "request_id": request_id}
    if code != 0:
        envelope["source"] = source_of(code)
    if not isinstance(data, bytes | bytearray):  # bytes go through _default: the stdlib path
        body = jsonfast.encode(envelope, _default)
        if body is not None:
            return body
    envelope["data"] = jsonfast.finite(data)
    try:
        try:
            return _ENCODER.encode(envelope).encode("utf-8")
        except ValueError as exc:
            if isinstance(exc, UnicodeError) or "JSON compliant" not in str(exc):
                raise
            envelope["data"] = _without_nan(data)  # rare: found only by the encoder, never silently
            return _ENCODER.encode(envelope).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (JSON allows "\ud800") cannot be UTF-8; \u escapes keep the value exact.
        return _ASCII_ENCODER.encode(envelope).encode("ascii")
