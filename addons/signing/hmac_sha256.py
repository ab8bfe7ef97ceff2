"""Generic HMAC-SHA256 request signing: a configurable string to sign, lowercase hex signature."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING

from addons.outbound import OutboundRequest
from addons.signing.schema import template_fields

if TYPE_CHECKING:
    from addons.signing.schema import HmacSha256Signing


class HmacSha256Signer:
    def __init__(self, spec: HmacSha256Signing) -> None:
        # The keyed state is built once and copied per call: copying skips re-deriving the
        # inner and outer padded keys.
        self._mac = hmac.new(spec.secret.get_secret_value().encode("utf-8"), digestmod=hashlib.sha256)
        self._template = spec.string_to_sign
        self._header = spec.header
        self._timestamp_header = spec.timestamp_header
        self._nonce_header = spec.nonce_header
        # Hashing a large body is the only real cost; skip it when the template does not use it.
        self._needs_body_hash = "body_sha256" in template_fields(spec.string_to_sign)

    def string_to_sign(self, req: OutboundRequest, timestamp: str, nonce: str) -> str:
        return self._template.format_map({
            "method": req.method,
            "path": req.path_and_query,
            "timestamp": timestamp,
            "nonce": nonce,
            "body_sha256": hashlib.sha256(req.body).hexdigest() if self._needs_body_hash else "",
            "host": req.authority,
        })

    def sign(self, req: OutboundRequest, now: float) -> None:
        timestamp = str(int(now))
        nonce = secrets.token_hex(16)
        mac = self._mac.copy()
        mac.update(self.string_to_sign(req, timestamp, nonce).encode("utf-8"))
        for name, value in (
            (self._timestamp_header, timestamp),
            (self._nonce_header, nonce),
            (self._header, mac.hexdigest()),
        ):
            # Replace, never merge: a second value from the caller would make the provider's check ambiguous.
            req.headers.popall(name, None)
            req.headers[name] = value

    def verify_response(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        return None
