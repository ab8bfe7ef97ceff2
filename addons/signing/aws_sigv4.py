"""AWS Signature Version 4, producing the headers botocore's SigV4Auth / S3SigV4Auth would send.

Implemented here rather than by calling botocore, which is a test-only dependency; the tests check
both give identical headers. botocore's rules are followed exactly where they decide the result:
which headers are signed (all but a fixed list), the double-encoded and dot-normalised path for
every service but S3, the payload hash, and `Date` taking the place of `X-Amz-Date` when present.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from email.utils import formatdate
from typing import TYPE_CHECKING
from urllib.parse import quote

from addons.errors import Code, GatewayError
from addons.outbound import OutboundRequest

if TYPE_CHECKING:
    from addons.signing.schema import AwsSigV4Signing

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"

# botocore's SIGNED_HEADERS_BLACKLIST (hop-by-hop, tracing and user-agent headers that proxies
# rewrite), plus proxy-connection, which is hop-by-hop too and never reaches the provider intact.
UNSIGNED_HEADERS = frozenset({
    "baggage", "connection", "expect", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "traceparent", "tracestate", "trailer", "transfer-encoding", "upgrade",
    "user-agent", "x-amzn-trace-id",
})

# Query-string authentication (a presigned URL): AWS refuses a request carrying two kinds of
# authentication, and these belong to the caller's key anyway.
PRESIGN_PARAMS = frozenset({
    "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
    "X-Amz-Signature", "X-Amz-Security-Token",
})

# Services botocore signs with S3SigV4Auth (signature version "s3v4"): path not normalised, payload
# hash always sent as X-Amz-Content-SHA256. s3control signs as "s3".
S3_SERVICES = frozenset({"s3", "s3-object-lambda", "s3-outposts", "s3express"})

# Payload hashes a caller may have chosen for a body it built to match: boto3 itself sends S3
# uploads over https as aws-chunked with STREAMING-UNSIGNED-PAYLOAD-TRAILER, and other SDKs send
# UNSIGNED-PAYLOAD. Neither depends on the caller's key, so the choice is kept and signed.
KEPT_PAYLOAD_HASHES = frozenset({UNSIGNED_PAYLOAD, STREAMING_UNSIGNED_TRAILER})


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 plus collapsing repeated slashes, as botocore's normalize_url_path does."""
    if not path:
        return "/"
    out: list[str] = []
    for segment in path.split("/"):
        if not segment or segment == ".":
            continue
        if segment == "..":
            if out:
                out.pop()
        else:
            out.append(segment)
    first = "/" if path[0] == "/" else ""
    last = "/" if path[-1] == "/" and out else ""
    return first + "/".join(out) + last


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


class AwsSigV4Signer:
    def __init__(self, spec: AwsSigV4Signing) -> None:
        self._access_key = spec.access_key_id
        self._secret = ("AWS4" + spec.secret_access_key.get_secret_value()).encode("utf-8")
        self._token = spec.session_token.get_secret_value() if spec.session_token is not None else None
        self._region = spec.region
        self._service = spec.service
        self._s3 = spec.service in S3_SERVICES
        # The signing key depends only on the UTC date: derived once a day, not four HMACs per call.
        self._key_date = ""
        self._key = b""

    def _signing_key(self, date: str) -> bytes:
        if date != self._key_date:
            k = _hmac(self._secret, date)
            k = _hmac(k, self._region)
            k = _hmac(k, self._service)
            self._key = _hmac(k, "aws4_request")
            self._key_date = date
        return self._key

    def _payload_hash(self, req: OutboundRequest, caller_hash: str | None) -> str:
        if caller_hash is None:
            return hashlib.sha256(req.body).hexdigest() if req.body else EMPTY_SHA256
        if caller_hash in KEPT_PAYLOAD_HASHES:
            return caller_hash
        if caller_hash.startswith("STREAMING-"):
            # Chunk-signed uploads carry per-chunk signatures chained to the caller's own key;
            # re-signing them means rewriting the body, which the gateway does not do.
            raise GatewayError(
                Code.CALLER_INVALID,
                f"aws_sigv4: chunk-signed uploads ({caller_hash[:48]}) cannot be re-signed; "
                "send an unsigned or single-chunk payload",
            )
        return hashlib.sha256(req.body).hexdigest() if req.body else EMPTY_SHA256

    def sign(self, req: OutboundRequest, now: float) -> None:
        headers = req.headers
        caller_hash = headers.get("X-Amz-Content-SHA256")
        # Replace, never merge: the caller's own signature, date and token are dropped first.
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-SHA256"):
            headers.popall(name, None)
        if any(k in PRESIGN_PARAMS for k, _ in req.query):
            req.query = [(k, v) for k, v in req.query if k not in PRESIGN_PARAMS]
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        headers.popall("Host", None)
        headers["Host"] = req.authority
        if "Date" in headers:
            # botocore signs a present Date header (refreshed) instead of adding X-Amz-Date.
            headers.popall("Date")
            headers["Date"] = formatdate(int(now))
        else:
            headers["X-Amz-Date"] = amz_date
        if self._token is not None:
            headers["X-Amz-Security-Token"] = self._token
        payload_hash = self._payload_hash(req, caller_hash)
        if self._s3 or caller_hash is not None:
            headers["X-Amz-Content-SHA256"] = payload_hash

        signed: dict[str, list[str]] = {}
        for name, value in headers.items():
            lname = name.lower()
            if lname not in UNSIGNED_HEADERS:
                signed.setdefault(lname, []).append(" ".join(value.split()))
        names = sorted(signed)
        signed_headers = ";".join(names)
        canonical_headers = "".join(f"{n}:{','.join(signed[n])}\n" for n in names)
        path = req.path if self._s3 else quote(remove_dot_segments(req.path), safe="/~")
        query = "&".join(
            f"{k}={v}"
            for k, v in sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in req.query)
        )
        canonical_request = "\n".join(
            (req.method.upper(), path, query, canonical_headers, signed_headers, payload_hash)
        )

        date = amz_date[:8]
        scope = f"{date}/{self._region}/{self._service}/aws4_request"
        string_to_sign = "\n".join(
            (ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode("utf-8")).hexdigest())
        )
        key = self._signing_key(date)
        signature = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        headers["Authorization"] = (
            f"{ALGORITHM} Credential={self._access_key}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        )

    def verify_response(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        return None
