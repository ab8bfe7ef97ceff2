"""Which addresses a pass-through connection may reach (SPEC 12), decided on the address actually
connected to, after resolution (like stripe/smokescreen: resolve, check every address, then dial
exactly the checked one, so DNS rebinding between check and connect cannot slip past).

Pure: the glue (`addons/chain/egress.py`) resolves names and pins the connection; this module only
classifies addresses and host patterns."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import translate

type IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
type IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Never public destinations: loopback, RFC 1918, link-local (the cloud metadata address
# 169.254.169.254 included), CGNAT, benchmarking, reserved, multicast, unspecified; IPv6 unique-local,
# link-local, multicast, and the ranges that embed an IPv4 address (NAT64, 6to4), which are mapped
# back to the IPv4 they carry before this list is consulted.
PRIVATE_NETWORKS: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "100::/64", "2001:db8::/32",
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIXTOFOUR = ipaddress.ip_network("2002::/16")


def embedded_v4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one stands for (`::ffff:127.0.0.1`, NAT64, 6to4), else `ip` itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
        # The deprecated IPv4-compatible form ::a.b.c.d (not ::1 and :: themselves).
        if int(ip) >> 32 == 0 and int(ip) > 1:
            return ipaddress.IPv4Address(int(ip))
    return ip


def parse_ip(text: str) -> IPAddress | None:
    """An address literal in the forms the socket layer accepts; None for a host name."""
    text = text.strip().strip("[]")
    if "%" in text:
        text = text.split("%", 1)[0]  # fe80::1%eth0: the zone does not change the class
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Endpoint:
    """A listener of the gateway (proxy, admin) or its state store: never a pass-through target.
    `ip` None: the listener binds every address, so any local or private address on `port` is it."""

    ip: IPAddress | None
    port: int


@dataclass
class EgressPolicy:
    deny_private: bool = True
    allow_cidrs: tuple[IPNetwork, ...] = ()
    protected: tuple[Endpoint, ...] = ()
    # (address, port) of each service's upstream -> service name: pass-through never reaches them.
    service_addresses: dict[tuple[IPAddress, int], str] = field(default_factory=dict)

    def refusal(self, ip: IPAddress, port: int, named: bool = False) -> str | None:
        """Why `ip:port` may not be connected to by pass-through traffic; None when it may.

        `named`: the caller named a host, not an address. A public address shared by many names (a
        CDN) may then be another site's; an address literal, or a private address, is a service's."""
        plain = embedded_v4(ip)
        for endpoint in self.protected:
            if endpoint.port != port:
                continue
            if endpoint.ip is None:
                if plain.is_loopback or plain.is_unspecified or plain.is_private or plain.is_link_local:
                    return f"{plain}:{port} is the gateway's own listener"
            elif embedded_v4(endpoint.ip) == plain or (plain.is_unspecified or (
                    plain.is_loopback and embedded_v4(endpoint.ip).is_loopback)):
                return f"{plain}:{port} is the gateway's own listener or state store"
        service = self.service_addresses.get((plain, port))
        if service is not None and (not named or not plain.is_global):
            return f"{plain}:{port} is the upstream of service {service}: call it as that service"
        if not self.deny_private:
            return None
        if any(plain.version == net.version and plain in net for net in self.allow_cidrs):
            return None
        if any(plain.version == net.version and plain in net for net in PRIVATE_NETWORKS):
            return f"{plain} is a private address (gateway.egress.allow_cidrs makes exceptions)"
        return None

    def choose(self, addresses: Iterable[IPAddress], port: int,
               named: bool = False) -> tuple[IPAddress | None, str | None]:
        """The address to dial among a name's resolved ones: all must be allowed (a name that also
        resolves somewhere private is refused, whichever address a retry would pick)."""
        chosen: IPAddress | None = None
        for ip in addresses:
            reason = self.refusal(ip, port, named)
            if reason is not None:
                return None, reason
            chosen = chosen or ip
        if chosen is None:
            return None, "the host does not resolve"
        return chosen, None


class HostPatterns:
    """An app's `passthrough:` list: exact host names or `*.example.com` (any subdomain)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = [p.strip().lower().rstrip(".") for p in patterns]
        joined = "|".join(translate(p) for p in self.patterns)
        self._regex = re.compile(joined) if joined else None

    def match(self, host: str) -> bool:
        return self._regex is not None and self._regex.match(host.lower().rstrip(".")) is not None
