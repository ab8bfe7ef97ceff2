"""The request the gateway sends upstream: built from the caller's request, then changed by
credentials and signers, then sent by the forwarder. Free of mitmproxy so signers can be tested alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from multidict import CIMultiDict


@dataclass
class OutboundRequest:
    method: str
    scheme: str
    host: str
    port: int
    path: str  # percent-encoded path as sent, starting with "/"
    query: list[tuple[str, str]] = field(default_factory=list)  # decoded pairs, in order
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    body: bytes = b""
    # The Host the provider sees when it is not the target's own: a wildcard host's subdomain
    # (bucket.s3.amazonaws.com) is part of the call, while the connection goes to the rule's target.
    named_host: str = ""

    @property
    def default_port(self) -> bool:
        return (self.scheme, self.port) in (("http", 80), ("https", 443))

    @property
    def authority(self) -> str:
        """host[:port] as it belongs in the Host header (and in signatures over the host)."""
        return self.named_host or self.connect_authority

    @property
    def connect_authority(self) -> str:
        """host[:port] the connection goes to."""
        return self.host if self.default_port else f"{self.host}:{self.port}"

    @property
    def query_string(self) -> str:
        # RFC 3986 encoding (space as %20): what SigV4, TC3 and most signers canonicalise to.
        return urlencode(self.query, quote_via=quote, safe="-_.~")

    @property
    def path_and_query(self) -> str:
        qs = self.query_string
        return f"{self.path}?{qs}" if qs else self.path

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.connect_authority}{self.path_and_query}"

    def set_query(self, name: str, value: str) -> None:
        """Replace every value of `name` with one (the caller's own value is never merged)."""
        self.query = [(k, v) for k, v in self.query if k != name]
        self.query.append((name, value))

    def get_query(self, name: str) -> str | None:
        for k, v in self.query:
            if k == name:
                return v
        return None

    def copy(self) -> OutboundRequest:
        return OutboundRequest(
            self.method, self.scheme, self.host, self.port, self.path,
            list(self.query), CIMultiDict(self.headers), self.body, self.named_host,
        )
