"""Tencent Cloud API 3.0 TC3-HMAC-SHA256, as tencentcloud-sdk-python's common client signs.

Signed headers are content-type;host, like the SDK. The canonical query string is the query as
sent for GET and empty otherwise, and the payload is empty for GET: the SDK's rules, which the
service checks against.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from addons.outbound import OutboundRequest

if TYPE_CHECKING:
    from addons.signing.schema import TencentTc3Signing

ALGORITHM = "TC3-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# The SDK always sends a Content-Type (it is a signed header); these are its choices.
DEFAULT_CONTENT_TYPE = {"GET": "application/x-www-form-urlencoded"}
FALLBACK_CONTENT_TYPE = "application/json"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


class TencentTc3Signer:
    def __init__(self, spec: TencentTc3Signing) -> None:
        self._secret_id = spec.secret_id
        self._secret = ("TC3" + spec.secret_key.get_secret_value()).encode("utf-8")
        self._service = spec.service
        self._region = spec.region
        # The signing key depends only on the UTC date: derived once a day.
        self._key_date = ""
        self._key = b""

    def _signing_key(self, date: str) -> bytes:
        if date != self._key_date:
            k = _hmac(self._secret, date)
            k = _hmac(k, self._service)
            self._key = _hmac(k, "tc3_request")
            self._key_date = date
        return self._key

    def sign(self, req: OutboundRequest, now: float) -> None:
        headers = req.headers
        method = req.method.upper()
        timestamp = int(now)
        # Replace, never merge: the caller's signature, timestamp and temporary-credential token
        # belong to the caller's key. X-TC-Action, X-TC-Version and the like are the call itself.
        for name in ("Authorization", "X-TC-Timestamp", "X-TC-Token"):
            headers.popall(name, None)
        headers.popall("Host", None)
        headers["Host"] = req.authority
        if "Content-Type" not in headers:
            headers["Content-Type"] = DEFAULT_CONTENT_TYPE.get(method, FALLBACK_CONTENT_TYPE)
        headers["X-TC-Timestamp"] = str(timestamp)
        if self._region:
            headers.popall("X-TC-Region", None)
            headers["X-TC-Region"] = self._region

        if headers.get("X-TC-Content-SHA256") == UNSIGNED_PAYLOAD:
            # The caller asked for an unsigned body (the SDK's unsignedPayload profile): the SDK
            # then hashes the marker itself.
            payload: bytes = UNSIGNED_PAYLOAD.encode("ascii")
        else:
            payload = b"" if method == "GET" else req.body
        # Tencent's rule: header names and values in lower case, trimmed.
        canonical_headers = (
            f"content-type:{headers['Content-Type'].strip().lower()}\nhost:{req.authority.lower()}\n"
        )
        canonical_request = "\n".join((
            method,
            req.path,
            req.query_string if method == "GET" else "",
            canonical_headers,
            "content-type;host",
            hashlib.sha256(payload).hexdigest(),
        ))
        date = time.strftime("%Y-%m-%d", time.gmtime(timestamp))
        scope = f"{date}/{self._service}/tc3_request"
        string_to_sign = "\n".join(
            (ALGORITHM, str(timestamp), scope, hashlib.sha256(canonical_request.encode("utf-8")).hexdigest())
        )
        key = self._signing_key(date)
        signature = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        headers["Authorization"] = (
            f"{ALGORITHM} Credential={self._secret_id}/{scope}, "
            f"SignedHeaders=content-type;host, Signature={signature}"
        )

    def verify_response(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        return None
