"""The envelope body the caller receives (SPEC 5): rendering, and splicing in a provider's JSON text
unchanged (`data_json`) where nothing needs it parsed."""

from __future__ import annotations

import json
import math
from typing import Any

from addons import jsonfast
from addons.errors import source_of


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
