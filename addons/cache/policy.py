"""What the cache keeps and when (SPEC 13): keys with secrets hashed, the caller's Cache-Control,
which answers may be stored and which failures may be answered from an expired copy."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from addons.cache.schema import CacheSpec

HIT, MISS, STALE, BYPASS = "hit", "miss", "stale", "bypass"
# Upstream failures after which an expired copy may answer (`stale_if_error`): the provider failed,
# timed out, was unreachable, answered unreadably or rate-limited the gateway. A provider that said
# "bad parameter" (-2005) or refused our credentials (-1002) is not a failing target.
STALE_CODES = frozenset({-1000, -1001, -1003, -1004, -1005})
# Headers that belong to one call, never to a stored answer: each call gets its own.
PER_CALL_HEADERS = frozenset({
    b"x-request-id", b"x-gateway-cache", b"x-gateway-attempts", b"x-gateway-degraded", b"ratelimit",
    b"ratelimit-policy", b"retry-after", b"content-length", b"date", b"connection", b"keep-alive",
    b"transfer-encoding",
})
ENTRY_OVERHEAD = 256  # bytes an entry costs besides its body and headers (object, key, bookkeeping)


@dataclass(slots=True)
class Entry:
    """One answer as a caller gets it, minus what belongs to one call. `rid_at` is where the
    request id goes in the body (the envelope names it), or -1."""

    code: int
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    rid_at: int
    stored_at: float
    fresh_until: float
    stale_until: float

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + ENTRY_OVERHEAD

    def render(self, request_id: str) -> bytes:
        if self.rid_at < 0:
            return self.body
        return self.body[:self.rid_at] + request_id.encode() + self.body[self.rid_at:]

    def to_bytes(self) -> bytes:
        head = [self.code, self.status, [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers],
                self.rid_at, self.stored_at, self.fresh_until, self.stale_until]
        return json.dumps(head, separators=(",", ":")).encode() + b"\n" + self.body

    @classmethod
    def from_bytes(cls, blob: bytes) -> Entry:
        head, _, body = blob.partition(b"\n")
        code, status, headers, rid_at, stored, fresh, stale = json.loads(head)
        return cls(int(code), int(status), tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers),
                   body, int(rid_at), float(stored), float(fresh), float(stale))


def capture(code: int, status: int, fields: Iterable[tuple[bytes, bytes]], body: bytes, request_id: str,
            now: float, ttl: float = 0.0, stale_if_error: float = 0.0) -> Entry:
    """An answer made reusable: per-call headers dropped, the request id cut out of the body."""
    headers = tuple((k, v) for k, v in fields if k.lower() not in PER_CALL_HEADERS)
    marker = b'"request_id":"' + request_id.encode() + b'"'
    at = body.rfind(marker)
    rid_at = -1
    if at >= 0:
        rid_at = at + len(marker) - 1 - len(request_id)
        body = body[:rid_at] + body[rid_at + len(request_id):]
    return Entry(code, status, headers, body, rid_at, now, now + ttl, now + ttl + stale_if_error)


def _part(h: hashlib._Hash, data: bytes) -> None:
    # Length-prefixed, so no two different key parts can run together into the same bytes.
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)


def build_key(spec: CacheSpec, service: str, method: str, http_method: str, path: str, form: str, *,
              app: str | None, query: Sequence[tuple[str, str]], body: bytes,
              header: dict[str, str]) -> str:
    """`service.method:<sha256>`: the rule in clear (purges and /status need it), everything else
    (path, query, body, headers, app: anything that may hold a secret) only hashed. `form` is how
    the caller gets answers (envelope or raw): the same call answered two ways is two entries."""
    h = hashlib.sha256()
    _part(h, http_method.encode())
    _part(h, path.encode("utf-8", "surrogateescape"))
    _part(h, form.encode())
    for part in spec.key:
        _part(h, part.encode())
        if part == "app":
            _part(h, (app or "").encode())
        elif part == "query":
            for name, value in sorted(query):
                _part(h, name.encode("utf-8", "surrogateescape"))
                _part(h, value.encode("utf-8", "surrogateescape"))
        elif part == "body":
            _part(h, hashlib.sha256(body).digest())
        else:  # header:NAME
            named = header.get(part[7:])
            _part(h, b"\x00absent" if named is None else b"=" + named.encode("latin-1", "replace"))
    return f"{service}.{method}:{h.hexdigest()}"


def caller_directive(cache_control: str | None, pragma: str | None = None) -> str:
    """What the caller asked for: `bypass` (no-store: neither read nor written), `refresh`
    (no-cache or max-age=0: go to the provider, store the new answer) or `` (use the cache)."""
    tokens = {t.strip().lower().replace(" ", "") for t in (cache_control or "").split(",")}
    if "no-store" in tokens:
        return "bypass"
    if "no-cache" in tokens or "max-age=0" in tokens or (not cache_control and pragma
                                                          and "no-cache" in pragma.lower()):
        return "refresh"
    return ""


def storable(spec: CacheSpec, code: int, status: int, attempts: int, fields: Iterable[tuple[bytes, bytes]],
             size: int) -> bool:
    """Only a provider's successful answer (code 0, HTTP 2xx; not a fallback or a local answer),
    not one setting a cookie (it belongs to one caller), and not over `max_entry`."""
    if code != 0 or not 200 <= status < 300 or attempts < 1 or size > spec.max_entry:
        return False
    return not any(k.lower() == b"set-cookie" for k, _ in fields)


def serves_stale(code: int | None, fallback: bool) -> bool:
    """Whether an expired copy may answer this failure: every target failed, or none is up."""
    return code is not None and code != 0 and (code in STALE_CODES or fallback)


@dataclass(slots=True)
class CallCache:
    """What the cache knows about one call of a cached method."""

    result: str  # hit | miss | stale | bypass: the X-Gateway-Cache value
    key: str = ""
    spec: CacheSpec | None = None
    entry: Entry | None = None  # a fresh copy: the call is answered from it
    stale: Entry | None = None  # an expired copy still inside stale_if_error
    flight: object = None  # the flight this call follows (another call is asking the provider)

    @property
    def spares_provider(self) -> bool:
        """The provider will not see this call: `per: service` quotas do not count it."""
        return self.entry is not None or self.flight is not None
