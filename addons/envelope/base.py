"""What every envelope adapter shares (SPEC 5): the provider's answer, the verdict, the status-first
judgement of `Base.classify`, and the helpers that read a body. The adapters live one per module
beside this one; `registry.make_adapter` picks one for a rule."""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from addons import jsonfast
from addons.errors import Code, code_for_status
from addons.redact import Redactor
from addons.text import clip, declared_charset

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

    @property
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
UNREADABLE = int(Code.UPSTREAM_UNREADABLE)


class Unreadable(Exception):
    """The body is not what the adapter needs; `reason` is the gateway's words, safe for the caller."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _clip(text: str, limit: int = DETAIL_LIMIT) -> str:
    """One line, at most `limit` characters: fit for a log field."""
    return clip(text, limit)


def _snippet(body: bytes) -> str:
    return _clip(body[:DETAIL_LIMIT * 2].decode("utf-8", "replace"))


def sentence(rule: str, code: int, suffix: str = "") -> str:
    return f"{rule}: {SENTENCES.get(code, 'provider reported an error')}{suffix}"


def _charset(headers: Mapping[str, str]) -> str | None:
    try:
        content_type = headers.get("content-type") or ""
    except Exception:  # a foreign mapping type must not turn into a crash
        return None
    return declared_charset(content_type)


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
                code = code_for_status(status)
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


def _provider_words(text: Any, redactor: Redactor) -> str:
    """A provider's sentence made fit for a caller-facing message: one short line, redacted."""
    return redactor.text(_clip(str(text), PROVIDER_TEXT_LIMIT))


