"""Which Redis a `gateway_redis` URL names (SPEC 15), and how its keys are placed.

- `redis://` / `rediss://` / `unix://`: one server (redis-py's own URL parsing, so `?ssl_ca_certs=`
  and the other connection options of redis-py work as documented there);
- `redis+cluster://[user:pass@]h1:p1[,h2:p2...]`: Redis Cluster, discovered from any listed node;
- `redis+sentinel://[user:pass@]h1:p1[,h2:p2...]/MASTER[/db]`: the master Sentinel names, followed
  through a failover; the password is the master's (`?sentinel_password=` for the sentinels').

`rediss+cluster://` and `rediss+sentinel://` are the TLS forms. Pure: no I/O, no mitmproxy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, unquote

Kind = Literal["single", "cluster", "sentinel"]

SINGLE_SCHEMES = ("redis://", "rediss://", "unix://")
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
# The query options a cluster or sentinel URL takes; anything else is a typo worth naming.
_MULTI_QUERY = frozenset({"ssl_ca_certs", "ssl_cert_reqs", "ssl_check_hostname", "sentinel_password"})


@dataclass(frozen=True)
class RedisTarget:
    kind: Kind
    url: str  # as configured (may hold a password: never log it, see redact_url)
    nodes: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    db: int = 0
    master: str | None = None  # sentinel: the monitored master's name
    tls: bool = False
    options: dict[str, str] = field(default_factory=dict)  # query options (ssl_ca_certs, ...)


def parse_redis_url(url: str) -> RedisTarget:
    """The engine a URL names; ValueError with a sentence naming what is wrong (never the password)."""
    url = url.strip()
    if url.startswith(SINGLE_SCHEMES):
        return RedisTarget("single", url, tls=url.startswith("rediss://"))
    if url.startswith(CLUSTER_SCHEMES):
        kind: Kind = "cluster"
    elif url.startswith(SENTINEL_SCHEMES):
        kind = "sentinel"
    else:
        scheme = url.split("://", 1)[0] + "://" if "://" in url else url[:20]
        raise ValueError(f"gateway_redis: unknown scheme {scheme!r}; use redis://, rediss://, "
                         "redis+cluster://h1:p1,h2:p2 or redis+sentinel://h1:p1,h2:p2/MASTER")
    tls = url.startswith("rediss+")
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, userinfo = netloc, ""
    username, password = _credentials(userinfo)
    nodes = _nodes(kind, hosts)
    options = _options(query)
    parts = [p for p in path.split("/") if p]
    master = None
    if kind == "sentinel":
        if not parts:
            raise ValueError("gateway_redis: a redis+sentinel:// URL names its master: "
                             "redis+sentinel://h1:p1,h2:p2/MASTER[/db]")
        master, parts = parts[0], parts[1:]
    if len(parts) > 1 or (parts and not parts[0].isdigit()):
        raise ValueError(f"gateway_redis: {'/'.join(parts)!r} is not a database number")
    db = int(parts[0]) if parts else 0
    if kind == "cluster" and db != 0:
        raise ValueError("gateway_redis: Redis Cluster has only database 0")
    return RedisTarget(kind, url, tuple(nodes), username, password, db, master, tls, options)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, secret = userinfo.partition(":")
    return unquote(user) or None, unquote(secret) if colon else None


def _nodes(kind: Kind, hosts: str) -> list[tuple[str, int]]:
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"gateway_redis: {kind} node {item.strip()!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


def _options(query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        if name not in _MULTI_QUERY:
            raise ValueError(f"gateway_redis: unknown option {name!r} (known: {', '.join(sorted(_MULTI_QUERY))})")
        options[name] = values[-1]
    return options


def slot_tag(key: str) -> str:
    """The part of a quota key that decides its cluster slot (the `{...}` hash tag).

    Every quota of one service (`svc:S`, `svc:S|app:A`, `m:S.M`, `m:S.M|app:A`) shares the tag S, so
    a call with service and method quotas is decided in one slot, in one round trip; an app's
    quota across everything (`app:A`) has its own tag, since it is shared by calls to every service.
    Services spread over the masters by name."""
    if key.startswith("svc:"):
        return "s:" + key[4:].split("|", 1)[0]
    if key.startswith("m:"):
        return "s:" + key[2:].split(".", 1)[0].split("|", 1)[0]
    return key
