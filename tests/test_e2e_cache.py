"""The response cache end to end (SPEC 13): real mitmdump processes, a fake provider that counts
calls, real HTTP clients, a real Redis shared by two gateways."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until
from tests.fakes import FakeProvider, Reply, Seen
from tests.harness import Gateway, write_rules

APPS = {"app-a": "secret-a-123", "app-b": "secret-b-456"}
QUERY_SECRET = "caller-token-zq81x"


def apps_file(gateway: str = "{}", app_quota: str = "[]") -> str:
    lines = ["apps:"] + [f"  {app}: {{secret: {secret}, quota: {app_quota}}}" for app, secret in APPS.items()]
    return "\n".join(lines) + f"\ngateway: {gateway}\n"


def geo_service(fake: FakeProvider, cache: str = "{ttl: 5m}", quota: str = "[]", retry: str = "null") -> str:
    return f"""
        service: geo
        hosts: [api.geo.test]
        upstream: {{url: "{fake.url}", timeout: 3s}}
        cache: {cache}
        quota: {quota}
        retry: {retry}
        methods:
          geocode: {{path: /geocode}}
          user: {{path: /user, cache: {{ttl: 5m, key: [app, query]}}}}
          send: {{method: POST, path: /send}}
          fail: {{path: /fail}}
    """


def counting(fake: FakeProvider, path: str, delay: float = 0.0, size: int = 0, close: bool = False) -> None:
    """The fake answers each call with its own serial number: a repeated number is a cached answer."""
    serial = itertools.count(1)
    lock = threading.Lock()

    def handler(seen: Seen) -> Reply:
        with lock:
            n = next(serial)
        return Reply(200, {"n": n, "q": seen.query, "pad": "x" * size}, delay=delay,
                     headers={"Connection": "close"} if close else {})

    fake.on("*", path, handler)


def start(gateways: list[Gateway], rules: Path, confdir: Path, redis_url: str = "") -> Gateway:
    gw = Gateway(rules, confdir, redis=redis_url).start()
    gateways.append(gw)
    return gw


def get(gw: Gateway, path: str, app: str = "app-a", **kwargs: Any) -> requests.Response:
    return requests.get(f"http://api.geo.test{path}", proxies=gw.proxies(app, APPS[app]), timeout=10, **kwargs)


def status(gw: Gateway) -> dict[str, Any]:
    answer = requests.get(gw.admin + "/status", timeout=5)
    assert answer.status_code == 200
    return answer.json()


def metric(gw: Gateway, name: str, **labels: str) -> float:
    text = requests.get(gw.admin + "/metrics", timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def test_hits_misses_and_distinct_keys(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                       gateways: list[Gateway]) -> None:
    counting(fake, "/geocode")
    counting(fake, "/user")
    apps = apps_file().replace("\ngateway:", "\n  outsider: {secret: secret-o-789, allow: [other.*]}\ngateway:")
    rules = write_rules(tmp_path / "rules", {"geo.yaml": geo_service(fake), "apps.yaml": apps})
    gw = start(gateways, rules, confdir)

    first = get(gw, f"/geocode?address=a&token={QUERY_SECRET}")
    second = get(gw, f"/geocode?token={QUERY_SECRET}&address=a", app="app-b")  # shared by apps; order-free
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.headers["X-Gateway-Cache"] == "miss" and second.headers["X-Gateway-Cache"] == "hit"
    assert first.json()["data"] == second.json()["data"] and first.json()["data"]["n"] == 1
    # A hit is a whole answer of its own: its own request id, in the header and the envelope.
    assert second.json()["request_id"] == second.headers["X-Request-ID"] != first.headers["X-Request-ID"]
    assert second.json()["code"] == 0 and second.json()["message"] == "success"
    assert int(second.headers["Content-Length"]) == len(second.content)
    assert len(fake.hits("/geocode")) == 1

    other = get(gw, "/geocode?address=b")
    assert other.headers["X-Gateway-Cache"] == "miss" and other.json()["data"]["n"] == 2
    assert len(fake.hits("/geocode")) == 2

    # key: [app, query]: each app has its own entry.
    users = [get(gw, "/user?id=7", app=app) for app in ("app-a", "app-b", "app-a")]
    assert [u.headers["X-Gateway-Cache"] for u in users] == ["miss", "miss", "hit"]
    assert [u.json()["data"]["n"] for u in users] == [1, 2, 1]

    # A method the cache does not cover for POST: bypassed, and says so.
    fake.on("POST", "/send", Reply(200, {"sent": True}))
    sent = requests.post("http://api.geo.test/send", json={"to": "x"}, proxies=gw.proxies("app-a", APPS["app-a"]),
                         timeout=10)
    assert sent.headers["X-Gateway-Cache"] == "bypass"

    # An app outside its allow list is refused before the cache is asked: never a hit, and it says so.
    outsider = requests.get(f"http://api.geo.test/geocode?address=a&token={QUERY_SECRET}", timeout=10,
                            proxies=gw.proxies("outsider", "secret-o-789"))
    assert outsider.status_code == 403 and outsider.json()["code"] == -2003
    assert outsider.headers["X-Gateway-Cache"] == "bypass" and outsider.json().get("data") is None
    assert len(fake.hits("/geocode")) == 2

    assert metric(gw, "gateway_cache_requests_total", service="geo", method="geocode", result="hit") == 1
    assert metric(gw, "gateway_cache_requests_total", service="geo", method="geocode", result="miss") == 2
    assert metric(gw, "gateway_cache_requests_total", service="geo", method="send", result="bypass") == 1
    doc = status(gw)
    assert doc["cache"]["backend"] == "memory" and doc["cache"]["entries"] == 4 and doc["cache"]["bytes"] > 0
    assert QUERY_SECRET not in requests.get(gw.admin + "/status", timeout=5).text


def test_concurrent_identical_misses_make_one_provider_call(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                                            gateways: list[Gateway]) -> None:
    counting(fake, "/geocode", delay=0.5)
    rules = write_rules(tmp_path / "rules", {"geo.yaml": geo_service(fake), "apps.yaml": apps_file()})
    gw = start(gateways, rules, confdir)
    barrier = threading.Barrier(20)

    def one(_: int) -> requests.Response:
        barrier.wait(5)
        return get(gw, "/geocode?address=same")

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one, range(20)))
    assert [a.status_code for a in answers] == [200] * 20
    assert {a.json()["data"]["n"] for a in answers} == {1}
    assert len(fake.hits("/geocode")) == 1
    assert sorted(a.headers["X-Gateway-Cache"] for a in answers) == ["hit"] * 19 + ["miss"]
    assert len({a.json()["request_id"] for a in answers}) == 20


def test_two_gateways_on_one_redis_share_entries(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                                 redis_url: str, gateways: list[Gateway]) -> None:
    counting(fake, "/geocode")
    rules = write_rules(tmp_path / "rules", {"geo.yaml": geo_service(fake), "apps.yaml": apps_file()})
    a = start(gateways, rules, confdir, redis_url)
    b = start(gateways, rules, confdir, redis_url)
    client = redis.Redis.from_url(redis_url)

    first = get(a, f"/geocode?address=x&token={QUERY_SECRET}")
    assert first.headers["X-Gateway-Cache"] == "miss"
    keys = wait_until(lambda: client.keys("gwc:*"), 5, what="the entry in Redis")
    # The key names the rule, never the call's parameters.
    assert all(QUERY_SECRET.encode() not in k and b"address" not in k for k in keys)  # type: ignore[attr-defined]
    assert all(k.startswith(b"gwc:{geo}.geocode:") for k in keys)  # type: ignore[attr-defined]
    second = get(b, f"/geocode?address=x&token={QUERY_SECRET}")
    assert second.headers["X-Gateway-Cache"] == "hit"
    assert second.json()["data"] == first.json()["data"]
    assert len(fake.hits("/geocode")) == 1
    assert status(b)["cache"]["backend"] == "redis" and status(b)["cache"]["entries"] == 1

    purged = requests.delete(b.admin + "/cache/geo", timeout=5)
    assert purged.status_code == 200 and purged.json()["purged"] == 1
    assert get(a, f"/geocode?address=x&token={QUERY_SECRET}").headers["X-Gateway-Cache"] == "miss"
    assert len(fake.hits("/geocode")) == 2


def test_caller_no_cache_refreshes_and_no_store_bypasses(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                                         gateways: list[Gateway]) -> None:
    counting(fake, "/geocode")
    rules = write_rules(tmp_path / "rules", {"geo.yaml": geo_service(fake), "apps.yaml": apps_file()})
    gw = start(gateways, rules, confdir)

    assert get(gw, "/geocode?a=1").json()["data"]["n"] == 1
    refreshed = get(gw, "/geocode?a=1", headers={"Cache-Control": "no-cache"})
    assert refreshed.headers["X-Gateway-Cache"] == "miss" and refreshed.json()["data"]["n"] == 2
    after = get(gw, "/geocode?a=1")
    assert after.headers["X-Gateway-Cache"] == "hit" and after.json()["data"]["n"] == 2  # the refreshed copy

    bypassed = get(gw, "/geocode?a=1", headers={"Cache-Control": "no-store"})
    assert bypassed.headers["X-Gateway-Cache"] == "bypass" and bypassed.json()["data"]["n"] == 3
    assert get(gw, "/geocode?a=1").json()["data"]["n"] == 2  # no-store stored nothing
    assert len(fake.hits("/geocode")) == 3


def test_errors_are_never_cached(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                 gateways: list[Gateway]) -> None:
    statuses = iter([503, 400, 500, 200])
    fake.on("GET", "/fail", lambda _seen: Reply(next(statuses), {"error": "provider trouble"}))
    rules = write_rules(tmp_path / "rules", {"geo.yaml": geo_service(fake), "apps.yaml": apps_file()})
    gw = start(gateways, rules, confdir)

    codes = [get(gw, "/fail").json()["code"] for _ in range(3)]
    assert codes == [-1003, -2005, -1000]
    recovered = get(gw, "/fail")
    assert recovered.json()["code"] == 0 and recovered.headers["X-Gateway-Cache"] == "miss"
    assert get(gw, "/fail").headers["X-Gateway-Cache"] == "hit"
    assert len(fake.hits("/fail")) == 4


def test_stale_answer_while_the_provider_refuses_connections(tmp_path: Path, confdir: Path,
                                                             gateways: list[Gateway]) -> None:
    fake = FakeProvider()
    try:
        # No keep-alive: once the fake is closed, no pooled connection reaches it.
        counting(fake, "/geocode", close=True)
        rules = write_rules(tmp_path / "rules", {
            "geo.yaml": geo_service(fake, cache="{ttl: 300ms, stale_if_error: 1h}"),
            "apps.yaml": apps_file()})
        gw = start(gateways, rules, confdir)
        stored = get(gw, "/geocode?address=s")
        assert stored.json()["data"]["n"] == 1
        expired_at = time.monotonic() + 0.35
        wait_until(lambda: time.monotonic() > expired_at, 2, what="the entry's ttl to pass")
    finally:
        fake.close()  # nothing listens on its port any more: connections are refused

    stale = get(gw, "/geocode?address=s")
    assert stale.status_code == 200 and stale.headers["X-Gateway-Cache"] == "stale"
    assert stale.json()["code"] == 0 and stale.json()["data"]["n"] == 1
    never_stored = get(gw, "/geocode?address=other")
    assert never_stored.json()["code"] == -1003 and never_stored.headers["X-Gateway-Cache"] == "miss"
    line = gw.log_for(stale.headers["X-Request-ID"])
    assert line["code"] == 0 and "connect" in line["error"] and line["cache"] == "stale"
    # The refused connects mark the target down; then no attempt is made at all (the fallback), and
    # the expired copy still answers.
    later = [get(gw, "/geocode?address=s") for _ in range(4)]
    assert [r.headers["X-Gateway-Cache"] for r in later] == ["stale"] * 4
    assert all(r.json()["data"]["n"] == 1 for r in later)
    assert gw.log_for(later[-1].headers["X-Request-ID"])["attempts"] == 0
    assert metric(gw, "gateway_cache_requests_total", service="geo", method="geocode", result="stale") == 5


def test_purge_a_method_or_a_service(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                     gateways: list[Gateway]) -> None:
    counting(fake, "/geocode")
    counting(fake, "/user")
    rules = write_rules(tmp_path / "rules", {"geo.yaml": geo_service(fake), "apps.yaml": apps_file()})
    gw = start(gateways, rules, confdir)
    for path in ("/geocode?a=1", "/geocode?a=2", "/user?id=1"):
        get(gw, path)

    one = requests.delete(gw.admin + "/cache/geo/geocode", timeout=5)
    assert one.json() == {"purged": 2, "service": "geo", "method": "geocode"}
    assert get(gw, "/geocode?a=1").headers["X-Gateway-Cache"] == "miss"
    assert get(gw, "/user?id=1").headers["X-Gateway-Cache"] == "hit"
    assert requests.delete(gw.admin + "/cache/geo", timeout=5).json()["purged"] == 2
    assert status(gw)["cache"]["entries"] == 0
    assert requests.delete(gw.admin + "/cache/nosuch", timeout=5).status_code == 404
    assert requests.delete(gw.admin + "/cache/geo/nosuch", timeout=5).status_code == 404


def test_hits_count_for_the_app_not_for_per_service_quotas(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                                           gateways: list[Gateway]) -> None:
    counting(fake, "/geocode")
    rules = write_rules(tmp_path / "rules", {
        "geo.yaml": geo_service(fake, quota="[{limit: 3/day, per: service}]"),
        "apps.yaml": apps_file()})
    gw = start(gateways, rules, confdir)
    answers = [get(gw, "/geocode?address=q") for _ in range(10)]
    assert [a.status_code for a in answers] == [200] * 10
    assert len(fake.hits("/geocode")) == 1
    # Two more misses fit in the service quota; the fourth provider call does not.
    assert [get(gw, f"/geocode?address={i}").status_code for i in range(3)] == [200, 200, 429]

    # The app's own quota counts every call, hits included.
    rules_b = write_rules(tmp_path / "rules-b", {"geo.yaml": geo_service(fake),
                                                 "apps.yaml": apps_file(app_quota="[{limit: 4/day}]")})
    gw_b = start(gateways, rules_b, confdir)
    codes = [get(gw_b, "/geocode?address=q").status_code for _ in range(6)]
    assert codes == [200, 200, 200, 200, 429, 429]
    refused = get(gw_b, "/geocode?address=q")
    assert refused.json()["code"] == -2004 and refused.headers["X-Gateway-Cache"] == "hit"


def test_memory_bound_respected_with_many_keys(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                               gateways: list[Gateway]) -> None:
    counting(fake, "/geocode", size=4000)
    rules = write_rules(tmp_path / "rules", {"geo.yaml": geo_service(fake),
                                             "apps.yaml": apps_file("{cache: {max_memory: 64k}}")})
    gw = start(gateways, rules, confdir)
    session = requests.Session()
    session.proxies = gw.proxies("app-a", APPS["app-a"])
    for i in range(60):
        assert session.get(f"http://api.geo.test/geocode?address={i}", timeout=10).status_code == 200
    cache = status(gw)["cache"]
    assert cache["bytes"] <= 64 * 1024 and cache["max_bytes"] == 64 * 1024
    assert 5 <= cache["entries"] < 60 and cache["evicted"] == 60 - cache["entries"]
    # Least recently used out: the newest answers are kept, the oldest went.
    assert session.get("http://api.geo.test/geocode?address=59", timeout=10).headers["X-Gateway-Cache"] == "hit"
    assert session.get("http://api.geo.test/geocode?address=0", timeout=10).headers["X-Gateway-Cache"] == "miss"
    # An answer over max_entry is never stored.
    counting(fake, "/user", size=300_000)
    session.get("http://api.geo.test/user?id=1", timeout=10)
    assert session.get("http://api.geo.test/user?id=1", timeout=10).headers["X-Gateway-Cache"] == "miss"


def test_hot_reload_changes_the_cache_and_drops_removed_services(tmp_path: Path, confdir: Path,
                                                                 fake: FakeProvider,
                                                                 gateways: list[Gateway]) -> None:
    counting(fake, "/geocode")
    rules = write_rules(tmp_path / "rules", {"geo.yaml": geo_service(fake), "apps.yaml": apps_file()})
    gw = start(gateways, rules, confdir)
    get(gw, "/geocode?a=1")
    assert get(gw, "/geocode?a=1").headers["X-Gateway-Cache"] == "hit"
    version = status(gw)["rules"]["version"]

    # A changed cache block takes effect: here, GET is no longer cached at all.
    write_rules(rules, {"geo.yaml": geo_service(fake, cache="{ttl: 5m, methods: [POST]}")})
    wait_until(lambda: status(gw)["rules"]["version"] != version, 5, what="the reload")
    assert get(gw, "/geocode?a=1").headers["X-Gateway-Cache"] == "bypass"
    wait_until(lambda: status(gw)["cache"]["entries"] == 0, 5, what="the old entries to go")

    write_rules(rules, {"geo.yaml": geo_service(fake)})
    wait_until(lambda: get(gw, "/geocode?a=1").headers.get("X-Gateway-Cache") in ("miss", "hit"), 5,
               what="the cache back on")
    assert status(gw)["cache"]["entries"] == 1
    (rules / "geo.yaml").unlink()
    wait_until(lambda: "geo" not in status(gw)["services"], 5, what="the service removed")
    wait_until(lambda: status(gw)["cache"]["entries"] == 0, 5, what="the removed service's entries to go")
