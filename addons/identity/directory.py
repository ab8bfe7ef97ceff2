"""Who is calling (SPEC 7): Basic proxy credentials, signed requests (signed.py), client addresses;
and what each app may call. Compiled once per rule set; lookups are dict and constant-time
comparisons."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
from fnmatch import translate

from addons.errors import Code, GatewayError
from addons.identity.schema import AppSpec
from addons.identity.signed import NONCE_RE, SIGNATURE_WINDOW, SignedRequest, string_to_sign


def parse_basic(value: str) -> tuple[str, str] | None:
    """`Basic base64(user:password)` -> (user, password); None when absent or malformed."""
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class AppDirectory:
    def __init__(self, apps: dict[str, AppSpec]) -> None:
        self.apps = apps
        self._secrets = {name: app.secret.get_secret_value().encode() for name, app in apps.items()
                         if app.secret is not None}
        networks = [(net, name) for name, app in apps.items() for net in app.sources]
        # Most specific network first, so a /32 for one host beats the /16 of its subnet.
        self._networks = sorted(networks, key=lambda item: -item[0].prefixlen)
        self._allow = {name: re.compile("|".join(translate(p) for p in app.allow)) for name, app in apps.items()}
        self._allowed: dict[tuple[str, str], bool] = {}  # cache: names are configured, so this is bounded

    def check_password(self, app: str, password: str) -> bool:
        expected = self._secrets.get(app)
        # compare_digest even for unknown apps, so timing does not tell which app names exist.
        return hmac.compare_digest(expected or b"\0" * 32, password.encode()) and expected is not None

    def by_address(self, address: str) -> str | None:
        if not self._networks:
            return None
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        for network, name in self._networks:
            if ip.version == network.version and ip in network:
                return name
        return None

    def verify_signature(self, signed: SignedRequest, method: str, path_and_query: str, body: bytes,
                         now: float) -> None:
        """Raises -2002 unless the signature, its clock and its nonce format are right (nonce reuse is
        checked by the caller in the shared store, after the signature, so garbage cannot fill it)."""
        known = self._secrets.get(signed.app)
        # An unknown app is checked against a placeholder key and fails like a wrong signature: the
        # answer must not tell a caller which app names exist (the Basic path hides it too).
        secret = known if known is not None else b"\0" * 32
        try:
            timestamp = int(signed.timestamp)
        except ValueError:
            raise GatewayError(Code.CALLER_SIGNATURE, "X-Gateway-Timestamp must be unix seconds") from None
        if abs(now - timestamp) > SIGNATURE_WINDOW:
            raise GatewayError(Code.CALLER_SIGNATURE,
                               "signed request expired (timestamp more than 300 s from the gateway's clock)")
        if not NONCE_RE.match(signed.nonce):
            raise GatewayError(Code.CALLER_SIGNATURE, "X-Gateway-Nonce must be 8 to 64 characters")
        expected = hmac.new(secret, string_to_sign(method, path_and_query, signed.timestamp, signed.nonce, body),
                            hashlib.sha256).hexdigest()
        # Bytes, not str: compare_digest raises TypeError on a non-ASCII str (a caller's garbage).
        given = signed.signature.strip().lower().encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(expected.encode(), given) or known is None:
            raise GatewayError(Code.CALLER_SIGNATURE, "request signature invalid")

    def allowed(self, app: str, rule: str) -> bool:
        key = (app, rule)
        decision = self._allowed.get(key)
        if decision is None:
            pattern = self._allow.get(app)
            decision = bool(pattern and pattern.match(rule))
            self._allowed[key] = decision
        return decision
