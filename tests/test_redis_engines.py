"""Which engine a gateway_redis URL names, how passwords are hidden, and how quota keys are placed
(SPEC 15): pure, no Redis needed."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from addons.state.base import QuotaCheck
from addons.state.engines import parse_redis_url, slot_tag
from addons.state.redis import RedisStore


def test_cluster_url_lists_its_nodes_and_credentials() -> None:
    target = parse_redis_url("redis+cluster://gw:p%40ss@10.0.0.1:7000,10.0.0.2:7001")
    assert target.kind == "cluster"
    assert target.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (target.username, target.password, target.tls) == ("gw", "p@ss", False)


def test_sentinel_url_names_its_master_and_db() -> None:
    target = parse_redis_url("rediss+sentinel://:pw@s1:26379,s2:26380/mymaster/2?ssl_ca_certs=/etc/ca.pem")
    assert target.kind == "sentinel" and target.tls
    assert (target.master, target.db, target.password) == ("mymaster", 2, "pw")
    assert target.options == {"ssl_ca_certs": "/etc/ca.pem"}


@pytest.mark.parametrize("url, words", [
    ("memcached://x:1", "unknown scheme"),
    ("redis+sentinel://s1:26379", "names its master"),
    ("redis+cluster://h1", "is not host:port"),
    ("redis+cluster://h1:99999", "is not host:port"),
    ("redis+cluster://h1:7000/3", "only database 0"),
    ("redis+cluster://h1:7000?ssl_ca_cert=/x", "unknown option 'ssl_ca_cert'"),
    ("redis+sentinel://s1:1/m/x", "not a database number"),
])
def test_bad_urls_say_what_is_wrong(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_redis_url(url)


def test_passwords_never_reach_the_status_url() -> None:
    for url in ("redis+cluster://gw:hunter2@h1:7000,h2:7001",
                "redis+sentinel://:hunter2@s1:26379/m?sentinel_password=hunter2",
                "redis://:hunter2@h:6379/0"):
        shown = RedisStore(url).url
        assert "hunter2" not in shown and "***" in shown, shown


def test_a_services_quotas_share_one_slot_and_services_spread() -> None:
    store = RedisStore("redis+cluster://127.0.0.1:1")
    keys = [store._counter(QuotaCheck(k, 1, 60), 0) for k in
            ("svc:pay", "svc:pay|app:a", "m:pay.refund", "m:pay.refund|app:b")]
    assert len({key_slot(k.encode()) for k in keys}) == 1, keys
    assert slot_tag("app:a") == "app:a" and slot_tag("svc:pay|app:a") == "s:pay"
    slots = {key_slot(store._counter(QuotaCheck(f"svc:{name}", 1, 60), 0).encode()) // 5462
             for name in ("alpha", "zeta", "kappa")}
    assert slots == {0, 1, 2}  # three services, three thirds of the slot space (three masters)
