"""WeChat Pay API v3 request signatures and answer verification (SPEC 17).

Request: `Authorization: WECHATPAY2-SHA256-RSA2048 mchid="..",nonce_str="..",signature="..",
timestamp="..",serial_no=".."`, the signature being base64 RSA-SHA256 (PKCS#1 v1.5) with the
merchant key over "METHOD\\npath?query\\ntimestamp\\nnonce\\nbody\\n": the path and query exactly as
they go on the wire and the exact body bytes sent. A multipart upload (`/v3/merchant/media/upload`)
signs its `meta` part instead of the whole body, as WeChat Pay specifies.

Answer: WeChat Pay signs "Wechatpay-Timestamp\\nWechatpay-Nonce\\nbody\\n" with the key that
`Wechatpay-Serial` names: its public key (`PUB_KEY_ID_...`) or one of its platform certificates.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from addons.errors import Code, GatewayError
from addons.outbound import OutboundRequest
from addons.signing.wechatpay_v3.schema import (
    certificate_serial,
    merchant_private_key,
    platform_certificate,
    platform_public_key,
)

if TYPE_CHECKING:
    from addons.signing.wechatpay_v3.schema import WechatPayV3Credentials

SCHEME = "WECHATPAY2-SHA256-RSA2048"
MAX_AGE = 300  # seconds: WeChat Pay's SDKs refuse an answer whose timestamp is further off than this
DETAIL_BODY = 500  # characters of a refused answer kept for the log

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.I)
_META_NAME = re.compile(rb'name="?meta"?(?:;|\s|$)', re.I)


def string_to_sign(method: str, path_and_query: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"{method.upper()}\n{path_and_query}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"


def answer_to_verify(timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


def multipart_meta(content_type: str, body: bytes) -> bytes | None:
    """The exact bytes of the `meta` part of a multipart/form-data body, or None when it has none."""
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    found = _BOUNDARY.search(content_type)
    if found is None:
        return None
    delimiter = b"--" + found.group(1).strip().encode("latin-1")
    for part in body.split(delimiter)[1:]:
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-disposition:") and _META_NAME.search(line):
                return content.removesuffix(b"\r\n")
    return None


def _snippet(body: bytes) -> str:
    text = body[: DETAIL_BODY * 2].decode("utf-8", "replace")
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()
    return text if len(text) <= DETAIL_BODY else text[: DETAIL_BODY - 1] + "…"


class WechatPayV3Signer:
    def __init__(self, spec: WechatPayV3Credentials, name: str = "wechatpay",
                 clock: Callable[[], float] = time.time) -> None:
        self._name = name
        self._mch_id = spec.mch_id
        self._serial_no = spec.serial_no
        self._clock = clock
        # Parsed once: loading an RSA key validates it and costs milliseconds.
        self._private_key = merchant_private_key(spec.private_key.get_secret_value())
        self._public_key_id = spec.platform_public_key_id
        self._public_key = platform_public_key(spec.platform_public_key) if spec.platform_public_key else None
        # Certificates by serial number as an integer: "0A1B" and "a1b" name the same certificate.
        # Each with its validity: as WeChat Pay's SDKs do, an expired certificate vouches for nothing.
        self._certificates: dict[int, tuple[rsa.RSAPublicKey, float, float]] = {}
        for text in spec.platform_certificates:
            cert = platform_certificate(text)
            key = cert.public_key()
            assert isinstance(key, rsa.RSAPublicKey)  # checked by the schema
            self._certificates[int(certificate_serial(cert), 16)] = (
                key, cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp())
        self._padding = padding.PKCS1v15()
        self._hash = hashes.SHA256()

    def authorization(self, method: str, path_and_query: str, body: bytes, timestamp: str, nonce: str) -> str:
        signature = self._private_key.sign(string_to_sign(method, path_and_query, timestamp, nonce, body),
                                           self._padding, self._hash)
        return (f'{SCHEME} mchid="{self._mch_id}",nonce_str="{nonce}",'
                f'signature="{base64.b64encode(signature).decode("ascii")}",'
                f'timestamp="{timestamp}",serial_no="{self._serial_no}"')

    def sign(self, req: OutboundRequest, now: float) -> None:
        # A fresh nonce and timestamp on every attempt: WeChat Pay refuses a replayed nonce.
        timestamp, nonce = str(int(now)), secrets.token_hex(16).upper()
        meta = multipart_meta(req.headers.get("Content-Type", ""), req.body)
        signed = meta if meta is not None else req.body
        req.headers.popall("Authorization", None)
        req.headers["Authorization"] = self.authorization(req.method, req.path_and_query, signed, timestamp, nonce)

    def verify_response(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        timestamp = headers.get("Wechatpay-Timestamp") or ""
        nonce = headers.get("Wechatpay-Nonce") or ""
        signature = headers.get("Wechatpay-Signature") or ""
        serial = headers.get("Wechatpay-Serial") or ""
        kind = headers.get("Wechatpay-Signature-Type")
        if not (timestamp and nonce and signature and serial):
            raise self._bad("answer carries no Wechatpay-Signature, -Timestamp, -Nonce or -Serial", body)
        if kind is not None and kind != SCHEME:
            raise self._bad(f"Wechatpay-Signature-Type {kind[:40]!r} is not {SCHEME}", body)
        key = self._key(serial, body)
        if not timestamp.isdigit() or abs(self._clock() - int(timestamp)) > MAX_AGE:
            raise self._bad(f"Wechatpay-Timestamp {timestamp[:20]!r} is more than {MAX_AGE}s off", body)
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise self._bad("Wechatpay-Signature is not base64", body) from None
        try:
            key.verify(raw, answer_to_verify(timestamp, nonce, body), self._padding, self._hash)
        except InvalidSignature:
            raise self._bad("Wechatpay-Signature does not match the answer", body) from None

    def _key(self, serial: str, body: bytes) -> rsa.RSAPublicKey:
        if self._public_key is not None and serial == self._public_key_id:
            return self._public_key
        try:
            found = self._certificates.get(int(serial, 16))
        except ValueError:
            found = None
        if found is None:
            raise self._bad(f"Wechatpay-Serial {serial[:80]!r} names no configured platform key", body)
        key, not_before, not_after = found
        if not not_before <= self._clock() <= not_after:
            raise self._bad(f"platform certificate {serial[:80]!r} is expired or not yet valid", body)
        return key

    def _bad(self, reason: str, body: bytes) -> GatewayError:
        # The refused answer goes to the log (the access log redacts it), never to the caller.
        return GatewayError(Code.UPSTREAM_UNREADABLE, f"{self._name}: provider answer signature invalid",
                            detail=f"{reason}; body: {_snippet(body)}")


__all__ = ["MAX_AGE", "SCHEME", "WechatPayV3Signer", "answer_to_verify", "multipart_meta", "string_to_sign"]
