"""The `json` envelope adapter (SPEC 5): any JSON answer, plain or with a declared success field."""

from __future__ import annotations

import json
from typing import Any

from addons.envelope.base import (
    ProviderAnswer,
    SplicedVerdict,
    Unreadable,
    Verdict,
    _Base,
    _clip,
    _json_with_text,
    _provider_words,
    _success,
    _utf8_json_text,
    sentence,
)
from addons.envelope.schema import JsonEnvelope
from addons.errors import Code
from addons.redact import Redactor


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
            return self._plain(answer)
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
        return self._failed(body, rule, code, provider_code)

    def _plain(self, answer: ProviderAnswer) -> Verdict:
        """No success field: any readable body is success."""
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

    def _failed(self, body: dict[str, Any], rule: str, code: int, provider_code: str) -> Verdict:
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

