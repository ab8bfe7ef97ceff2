"""Signed requests (SPEC 7): what a caller signs with its app secret, and the headers that carry it.

The gateway checks a signature in AppDirectory.verify_signature (directory.py); `sign` is what a
client computes (exported for client libraries and tests)."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

SIGNATURE_WINDOW = 300.0  # seconds either side of the gateway's clock
NONCE_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{8,64}$")
GATEWAY_HEADERS = ("x-gateway-app", "x-gateway-timestamp", "x-gateway-nonce", "x-gateway-signature")


@dataclass(frozen=True)
class SignedRequest:
    app: str
    timestamp: str
    nonce: str
    signature: str


def string_to_sign(method: str, path_and_query: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return "\n".join((method.upper(), path_and_query, timestamp, nonce, hashlib.sha256(body).hexdigest())).encode()


def sign(secret: str, method: str, path_and_query: str, timestamp: str, nonce: str, body: bytes) -> str:
    """What a caller computes for `X-Gateway-Signature` (exported for client libraries and tests)."""
    return hmac.new(secret.encode(), string_to_sign(method, path_and_query, timestamp, nonce, body),
                    hashlib.sha256).hexdigest()
