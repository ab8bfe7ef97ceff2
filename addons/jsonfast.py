"""Fast JSON for provider bodies and envelopes, with the stdlib's results wherever the two differ.

Decoding uses msgspec (integers of any size stay exact, as with `json`; orjson would turn them into
floats); encoding uses orjson (bytes, sets, datetimes and other objects go through the same
`default` as the stdlib encoder, and `orjson.Fragment` splices a provider's body unchanged). Both
refuse what the stdlib accepts and JSON does not strictly allow (a lone surrogate `"\\ud800"`, a
number beyond a double, integer keys, integers beyond 64 bits when encoding): the caller then takes
the stdlib path, so the result is what it always was. A float the stdlib would write as `NaN` or
`Infinity` (not JSON) becomes `null` here, so the envelope stays valid JSON."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import orjson

BOM = b"\xef\xbb\xbf"
NOT_FAST = object()  # "the fast path declined: use the stdlib"



def _finite(literal: str) -> float | str:
    # A number beyond a double (1e999999) stays its text, as the stdlib path keeps it: as a float it
    # would be infinite, which JSON cannot carry.
    value = float(literal)
    return value if value - value == 0.0 else literal


_DECODER = msgspec.json.Decoder(float_hook=_finite)
_DECODER_RAW = msgspec.json.Decoder(msgspec.Raw)
# Datetimes and dataclasses go to `default` (str()), as the stdlib encoder would have them.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def decode_utf8(body: bytes) -> tuple[Any, bytes] | object:
    """`(value, json_text)` of a UTF-8 body (a leading BOM dropped, surrounding whitespace off the
    text), or NOT_FAST when msgspec refuses it (the stdlib then decides and words the error)."""
    if body.startswith(BOM):
        body = body[len(BOM):]
    try:
        return _DECODER.decode(body), body.strip()
    except (msgspec.DecodeError, RecursionError):
        return NOT_FAST


def json_text(body: bytes) -> bytes | None:
    """The body as JSON text to splice unchanged (a leading BOM and surrounding whitespace off), when
    it is well-formed UTF-8 JSON; checked without building any Python object. None: not so, or a
    lone surrogate escape the stdlib accepts (the caller parses it then).

    A number beyond a double (`1e999999`) passes as the provider wrote it: that is valid JSON, and
    looking for such numbers would cost more than the splice saves (a scan of a 100 KB body takes
    longer than the gateway's whole per-call work); where the body is parsed, it keeps its text."""
    if body.startswith(BOM):
        body = body[len(BOM):]
    try:
        _DECODER_RAW.decode(body)  # the JSON grammar, nothing built
        body.decode("utf-8")  # msgspec does not check the bytes inside strings when it skips them
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    return body.strip()


def encode(value: Any, default: Callable[[Any], Any]) -> bytes | None:
    """Compact UTF-8 JSON of `value`, or None when neither library can say it as the stdlib would."""
    try:
        return orjson.dumps(value, default=default, option=_OPTIONS)
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            return None
    except RecursionError:
        return None
    try:  # an integer beyond 64 bits: msgspec writes it exactly (and infinities as null)
        return msgspec.json.Encoder(enc_hook=default).encode(value)
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        return None


def finite(value: Any) -> Any:
    """`value` with every NaN and infinity replaced by None (JSON has no such numbers), for the
    stdlib encoder, which would write them as `NaN` / `Infinity`."""
    if isinstance(value, float):
        return value if value - value == 0.0 else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def fragment(json_text: bytes) -> orjson.Fragment:
    """Already-encoded JSON, placed into an encoded document as it is."""
    return orjson.Fragment(json_text)
