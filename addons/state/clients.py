"""A redis-py client for whatever engine a `gateway_redis` URL names (SPEC 15): one server, Redis
Cluster or a Sentinel-managed master. The state store, the response cache and the shaping fleet
channel all build their clients here, so every feature that uses Redis works on every engine.

No retries inside the clients: each caller decides what a failure means (the state store's
fallback, the cache's miss), and a retry with backoff would multiply the time an outage costs a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from addons.state.engines import RedisTarget, parse_redis_url


@dataclass
class Connected:
    target: RedisTarget
    client: Any  # redis.asyncio.Redis or RedisCluster
    pool: Any = None  # the connection pool of a one-server or Sentinel client (None on a cluster)
    sentinel: Sentinel | None = None


def tls_options(target: RedisTarget) -> dict[str, Any]:
    if not target.tls:
        return {}
    options: dict[str, Any] = {"ssl": True}
    if target.options.get("ssl_ca_certs"):
        options["ssl_ca_certs"] = target.options["ssl_ca_certs"]
    if target.options.get("ssl_cert_reqs"):
        options["ssl_cert_reqs"] = target.options["ssl_cert_reqs"]
    if target.options.get("ssl_check_hostname"):
        options["ssl_check_hostname"] = target.options["ssl_check_hostname"].lower() in ("1", "true", "yes")
    return options


def connect(url: str, *, timeout: float, connect_timeout: float, max_connections: int,
            blocking: bool = False) -> Connected:
    """A client for `url` (nothing is sent yet). `blocking`: on one server, calls beyond
    `max_connections` wait for a pooled connection instead of failing. ValueError for a URL that
    names no engine."""
    target = parse_redis_url(url)
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    if target.kind == "single":
        pool: aioredis.ConnectionPool
        if blocking:
            pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout,
                                                            **common)
        else:
            pool = aioredis.ConnectionPool.from_url(url, max_connections=max_connections, **common)
        return Connected(target, aioredis.Redis.from_pool(pool), pool)
    if target.kind == "cluster":
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            username=target.username, password=target.password, max_connections=max_connections,
            **common, **tls_options(target),
        )
        return Connected(target, client)
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout,
                                       "retry": Retry(NoBackoff(), 0), **tls_options(target)}
    if target.options.get("sentinel_password"):
        sentinel_kwargs["password"] = target.options["sentinel_password"]
    sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs)
    assert target.master is not None
    client = sentinel.master_for(target.master, username=target.username, password=target.password,
                                 db=target.db, max_connections=max_connections, **common, **tls_options(target))
    return Connected(target, client, client.connection_pool, sentinel)


def subscriber(url: str, *, connect_timeout: float) -> aioredis.Redis:
    """A client for SUBSCRIBE. On a cluster any node will do: Redis Cluster delivers a PUBLISH to
    the subscribers of every node (redis-py's asyncio cluster client has no pub/sub of its own)."""
    target = parse_redis_url(url)
    if target.kind == "cluster":
        host, port = target.nodes[0]
        return aioredis.Redis(host=host, port=port, username=target.username, password=target.password,
                              socket_connect_timeout=connect_timeout, health_check_interval=30,
                              **tls_options(target))
    if target.kind == "sentinel":
        return connect(url, timeout=None, connect_timeout=connect_timeout,  # type: ignore[arg-type]
                       max_connections=4).client
    return aioredis.Redis.from_url(url, socket_connect_timeout=connect_timeout, health_check_interval=30)
