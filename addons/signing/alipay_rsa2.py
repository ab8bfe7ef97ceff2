"""Alipay open API (openapi.alipay.com/gateway.do) request signing and response verification, RSA2.

Request: the common parameters are added and `sign` is base64 RSA-SHA256 (PKCS#1 v1.5) over the
sorted `k=v` pairs, joined with `&`, of every non-empty parameter except `sign`, from the query
string and an `application/x-www-form-urlencoded` body together (Alipay's gateway reads both).

Response: Alipay signs the exact text of the `*_response` member of its JSON answer, so that text
is cut out of the raw body; a re-serialised object would differ in spacing, order and escapes.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from addons.errors import Code, GatewayError
from addons.outbound import OutboundRequest

if TYPE_CHECKING:
    from addons.signing.schema import AlipayRsa2Signing

# China has had no daylight saving time since 1991, so a fixed offset is exact and needs no tzdata.
SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"

# Parameters that carry the app's identity or signature: whatever the caller sent is dropped and
# the gateway's own value is used (SPEC 6: replaced, never merged). `app_cert_sn` and
# `alipay_root_cert_sn` belong to certificate mode, which would make Alipay check the signature
# against the caller's certificate instead of the configured key.
REPLACED = frozenset({"sign", "sign_type", "app_id", "timestamp", "app_cert_sn", "alipay_root_cert_sn"})

FORM_TYPE = "application/x-www-form-urlencoded"
SUCCESS_CODE = "10000"

_PEM_RE = re.compile(r"-----BEGIN ([A-Z ]+)-----")


def _normalise_key_text(text: str) -> str:
    # A PEM passed through `${ENV}` often arrives with literal "\n" sequences instead of newlines.
    text = text.strip()
    if "\\n" in text and "\n" not in text:
        text = text.replace("\\n", "\n")
    return text


def _bare_base64(text: str) -> bytes:
    """The key body without PEM armour, as Alipay's console and key tool hand it out."""
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("it is neither a PEM block nor base64") from None


def load_private_key(text: str) -> rsa.RSAPrivateKey:
    """PKCS#1 (`RSA PRIVATE KEY`) or PKCS#8 (`PRIVATE KEY`) PEM, or the bare base64 of either."""
    text = _normalise_key_text(text)
    try:
        if _PEM_RE.search(text):
            key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
        else:
            key = serialization.load_der_private_key(_bare_base64(text), password=None)
    except TypeError:
        # cryptography says TypeError when the key is encrypted and no password was given.
        raise ValueError("the private key is encrypted; give it unencrypted") from None
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        reason = str(exc) if isinstance(exc, ValueError) and "neither" in str(exc) else "it does not parse"
        raise ValueError(
            f"private_key is not a usable RSA private key ({reason}); expected a PKCS#1 or PKCS#8 PEM, "
            "or the bare base64 key from Alipay's console"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("private_key is not an RSA key (RSA2 needs an RSA key)")
    return key


def load_public_key(text: str) -> rsa.RSAPublicKey:
    """`PUBLIC KEY` (X.509 SubjectPublicKeyInfo) or `RSA PUBLIC KEY` (PKCS#1) PEM, or bare base64."""
    text = _normalise_key_text(text)
    try:
        if _PEM_RE.search(text):
            key = serialization.load_pem_public_key(text.encode("ascii"))
        else:
            key = serialization.load_der_public_key(_bare_base64(text))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise ValueError(
            "alipay_public_key is not a usable RSA public key; expected a PEM public key "
            "or the bare base64 'Alipay public key' from Alipay's console"
        ) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("alipay_public_key is not an RSA key")
    return key


def sign_content(params: list[tuple[str, str]]) -> str:
    """The string Alipay signs: non-empty pairs except `sign`, sorted by name, `k=v` joined by `&`."""
    return "&".join(f"{k}={v}" for k, v in sorted(params) if k and v and k != "sign")


def _first(pairs: list[tuple[str, str]], name: str) -> str | None:
    for k, v in pairs:
        if k == name:
            return v
    return None


def _is_form(req: OutboundRequest) -> bool:
    content_type = req.headers.get("Content-Type", "")
    return content_type.split(";", 1)[0].strip().lower() == FORM_TYPE


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def split_answer(text: str) -> tuple[str | None, Any, str | None]:
    """(raw text of the first `*_response` object, that object parsed, `sign`) of an Alipay answer.

    Walks the top-level object with the json module's own scanner so that every member's exact
    span in the raw text is known; braces or quotes inside strings cannot confuse it.
    Raises ValueError when the text is not a JSON object.
    """
    decoder = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if text[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    i = _skip_ws(text, i + 1)
    raw: str | None = None
    parsed: Any = None
    sign: str | None = None
    if text[i : i + 1] == "}":
        return raw, parsed, sign
    while True:
        if text[i : i + 1] != '"':
            raise ValueError(f"expected a member name at {i}")
        key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        i = _skip_ws(text, i)
        if text[i : i + 1] != ":":
            raise ValueError(f"expected ':' at {i}")
        start = _skip_ws(text, i + 1)
        value, end = decoder.raw_decode(text, start)
        if raw is None and key.endswith("_response") and isinstance(value, dict):
            raw, parsed = text[start:end], value
        elif key == "sign" and isinstance(value, str):
            sign = value
        i = _skip_ws(text, end)
        if text[i : i + 1] == ",":
            i = _skip_ws(text, i + 1)
            continue
        if text[i : i + 1] == "}":
            return raw, parsed, sign
        raise ValueError(f"expected ',' or '}}' at {i}")


def _decode_answer(body: bytes) -> tuple[str, str]:
    """The answer's text and the codec that gives back its exact bytes.

    Alipay answers in the charset of the request; the signer does not see the request here, so
    UTF-8 is tried first and GB18030 (a superset of GBK and GB2312) second. Both round-trip exactly,
    so re-encoding the cut-out text reproduces the signed bytes.
    """
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return body.decode("gb18030"), "gb18030"


class AlipayRsa2Signer:
    def __init__(self, spec: AlipayRsa2Signing, name: str = "alipay") -> None:
        self._name = name
        self._app_id = spec.app_id
        # Parsed once here: RSA key loading validates the key and costs milliseconds.
        self._private_key = load_private_key(spec.private_key.get_secret_value())
        self._public_key = (
            load_public_key(spec.alipay_public_key.get_secret_value())
            if spec.alipay_public_key is not None
            else None
        )
        self._padding = padding.PKCS1v15()
        self._hash = hashes.SHA256()

    def _caller_error(self, message: str) -> GatewayError:
        return GatewayError(Code.CALLER_INVALID, f"{self._name}: {message}")

    def sign(self, req: OutboundRequest, now: float) -> None:
        codec, body_pairs = self._form_body(req)

        # An empty charset or version counts as not given: it is dropped and the default added,
        # so Alipay never sees two values for one parameter.
        blank = {k for k in ("charset", "version") if not (_first(req.query, k) or _first(body_pairs, k))}
        drop = REPLACED | blank
        query = [(k, v) for k, v in req.query if k not in drop]
        kept_body = [(k, v) for k, v in body_pairs if k not in drop]
        added = self._protocol_parameters(now, charset_given="charset" not in drop,
                                          version_given="version" not in drop)

        content = sign_content(query + kept_body + added)
        try:
            signature = self._private_key.sign(content.encode(codec), self._padding, self._hash)
        except UnicodeEncodeError:
            raise self._caller_error(f"parameters cannot be encoded in {codec}") from None

        req.query = [*query, *added, ("sign", base64.b64encode(signature).decode("ascii"))]
        if len(kept_body) != len(body_pairs):
            # Only rewritten when a replaced parameter was removed, so an untouched body keeps its bytes.
            req.body = urlencode(kept_body, encoding=codec).encode("ascii")

    def _form_body(self, req: OutboundRequest) -> tuple[str, list[tuple[str, str]]]:
        """The codec the request's charset names (UTF-8 when none is given), and its form body's
        parameters decoded with it (none for a body that is not a form)."""
        # The form body may be in the request's charset (GBK), not UTF-8, and which charset it is
        # is only known after reading the `charset` parameter: decode via latin-1 first, which
        # maps every byte to itself, and decode the real charset afterwards.
        raw_body_pairs = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in parse_qsl(req.body.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
        ] if _is_form(req) and req.body else []
        charset = _first(req.query, "charset")
        if not charset:
            charset = next((v.decode("ascii", "replace") for k, v in raw_body_pairs if k == b"charset"), None)
        codec = charset or "utf-8"
        try:
            codecs.lookup(codec)
        except LookupError:
            raise self._caller_error(f"unknown charset {codec[:40]!r}") from None
        try:
            return codec, [(k.decode(codec), v.decode(codec)) for k, v in raw_body_pairs]
        except UnicodeDecodeError:
            raise self._caller_error(f"form body is not valid {codec}") from None

    def _protocol_parameters(self, now: float, *, charset_given: bool, version_given: bool) -> list[tuple[str, str]]:
        # Added parameters go to the query string, where Alipay's own SDKs put the protocol
        # parameters; the caller's parameters stay where the caller put them.
        added = [
            ("app_id", self._app_id),
            ("sign_type", "RSA2"),
            ("timestamp", datetime.fromtimestamp(now, SHANGHAI).strftime(TIMESTAMP_FORMAT)),
        ]
        if not charset_given:
            added.append(("charset", "utf-8"))
        if not version_given:
            added.append(("version", "1.0"))
        return added

    def verify_response(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        if self._public_key is None or not 200 <= status < 300:
            # A non-2xx answer comes from something in front of Alipay's gateway (a load balancer,
            # an outage page), not from the API; the status mapping of SPEC 5 handles it.
            return
        try:
            text, codec = _decode_answer(body)
            raw, parsed, sign = split_answer(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            # RecursionError: absurdly deep nesting must end the call cleanly, not crash the hook.
            raise self._bad(f"answer is not a JSON object: {type(exc).__name__}") from None
        if raw is None:
            raise self._bad("answer has no *_response object")
        if not sign:
            # As Alipay's own SDKs do: only an error answer may come unsigned (Alipay does not
            # always sign them, e.g. for an unknown app_id), and trusting one only ever turns the
            # call into a failure that keeps Alipay's own error code. Anything else must be signed.
            code = parsed.get("code")
            if not isinstance(code, str) or not code or code == SUCCESS_CODE:
                raise self._bad("answer carries no sign")
            return
        try:
            signature = base64.b64decode(sign, validate=True)
        except (binascii.Error, ValueError):
            raise self._bad("sign is not base64") from None
        if self._check(raw.encode(codec), signature):
            return
        # Alipay's SDKs retry with "\/" unescaped: some answers are signed over the unescaped text.
        if "\\/" in raw and self._check(raw.replace("\\/", "/").encode(codec), signature):
            return
        raise self._bad("RSA2 signature does not match the *_response text")

    def _check(self, content: bytes, signature: bytes) -> bool:
        assert self._public_key is not None
        try:
            self._public_key.verify(signature, content, self._padding, self._hash)
        except InvalidSignature:
            return False
        return True

    def _bad(self, detail: str) -> GatewayError:
        return GatewayError(
            Code.UPSTREAM_UNREADABLE, f"{self._name}: provider answer signature invalid", detail=detail
        )


__all__ = [
    "SHANGHAI",
    "AlipayRsa2Signer",
    "load_private_key",
    "load_public_key",
    "sign_content",
    "split_answer",
]
