"""The cache's pure parts (SPEC 13): schema, keys, entries, the caller's directives, what may be
stored, the memory store's bound, single flight; and the Redis store against a real redis-server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from addons.cache.flight import SingleFlight
from addons.cache.policy import Entry, build_key, caller_directive, capture, serves_stale, storable
from addons.cache.schema import CacheSpec, GatewayCacheSpec, parse_size
from addons.cache.stores.memory import MemoryCache
from addons.cache.stores.redis import RedisCache
from addons.quota.policy import per_app_only, quota_checks
from addons.quota.schema import QuotaSpec
from addons.rules.loader import load_sources
from tests.fakes import refused_url

SPEC = CacheSpec(ttl="5m")


def key(spec: CacheSpec = SPEC, **kw: object) -> str:
    args: dict[str, object] = {"app": "a", "query": [("address", "x"), ("token", "s3cr3t-value")], "body": b"",
                               "header": {}}
    args.update(kw)
    return build_key(spec, "geo", "geocode", "GET", "/geocode", "envelope", **args)  # type: ignore[arg-type]


def test_schema_defaults_sizes_and_errors() -> None:
    assert (SPEC.ttl, SPEC.key, SPEC.methods, SPEC.stale_if_error, SPEC.max_entry) == (
        300.0, ["query", "body"], ["GET", "HEAD"], 0.0, 256 * 1024)
    assert GatewayCacheSpec().max_memory == 64 * 1024 * 1024
    assert [parse_size(v) for v in ("512", "256k", "64m", "1g", 7)] == [512, 262144, 64 << 20, 1 << 30, 7]
    spec = CacheSpec(ttl="1s", key=["app", "header:X-Lang"], methods=["post"])
    assert spec.key == ["app", "header:x-lang"] and spec.methods == ["POST"]
    for bad in ({"ttl": "0s"}, {"ttl": "1m", "key": ["cookies"]}, {"ttl": "1m", "methods": ["FETCH"]},
                {"ttl": "1m", "max_entry": "lots"}, {"ttl": "1m", "extra": 1}, {}):
        with pytest.raises(ValidationError):
            CacheSpec.model_validate(bad)


def test_cache_blocks_in_rule_files_with_line_numbers(tmp_path: Path) -> None:
    rules, problems = load_sources([
        ("geo.yaml", "service: geo\nupstream: {url: 'http://geo.test'}\ncache: {ttl: 5m, stale_if_error: 1h}\n"
                     "methods:\n  g: {path: /g, cache: {ttl: 10s, key: [app]}}\n"),
        ("gw.yaml", "gateway: {cache: {max_memory: 16m}}\n"),
    ], tmp_path)
    assert problems == []
    assert rules.services["geo"].cache.stale_if_error == 3600  # type: ignore[union-attr]
    assert rules.services["geo"].methods["g"].cache.key == ["app"]  # type: ignore[union-attr]
    assert rules.gateway.cache.max_memory == 16 << 20
    _, problems = load_sources([
        ("bad.yaml", "service: geo\nupstream: {url: 'http://geo.test'}\ncache: {ttl: 5m, key: [cookie]}\n")],
        tmp_path)
    assert len(problems) == 1 and "bad.yaml:3" in str(problems[0]) and "cache" in str(problems[0])


def test_keys_hold_no_secret_and_separate_what_they_should() -> None:
    k = key()
    assert k.startswith("geo.geocode:") and "s3cr3t" not in k and "address" not in k
    assert key(query=[("token", "s3cr3t-value"), ("address", "x")]) == k  # parameter order does not matter
    assert key(query=[("address", "y")]) != k
    assert key(app="b") == k  # the default key is shared by all apps
    per_app = CacheSpec(ttl="1m", key=["app", "query"])
    assert key(per_app, app="b") != key(per_app, app="a")
    by_header = CacheSpec(ttl="1m", key=["header:authorization"])
    assert key(by_header, header={"authorization": "Bearer one"}) != key(by_header, header={"authorization": "two"})
    assert key(by_header, header={}) != key(by_header, header={"authorization": ""})
    with_body = CacheSpec(ttl="1m", key=["body"])
    assert key(with_body, body=b"a") != key(with_body, body=b"b")
    assert build_key(SPEC, "geo", "geocode", "GET", "/g", "raw", app=None, query=[], body=b"", header={}) != \
        build_key(SPEC, "geo", "geocode", "GET", "/g", "envelope", app=None, query=[], body=b"", header={})
    assert build_key(SPEC, "geo", "geocode", "HEAD", "/g", "raw", app=None, query=[], body=b"", header={}) != \
        build_key(SPEC, "geo", "geocode", "GET", "/g", "raw", app=None, query=[], body=b"", header={})


def test_an_entry_gets_each_callers_request_id_and_survives_serialisation() -> None:
    body = b'{"code":0,"message":"success","data":{"x":1},"request_id":"rid-one-12345"}'
    fields = [(b"Content-Type", b"application/json"), (b"X-Request-ID", b"rid-one-12345"),
              (b"RateLimit", b'"geo/app/day";r=3;t=9'), (b"Content-Length", b"70")]
    entry = capture(0, 200, fields, body, "rid-one-12345", 1000.0, 60, 30)
    assert entry.headers == ((b"Content-Type", b"application/json"),)
    assert entry.render("rid-two-67890") == body.replace(b"rid-one-12345", b"rid-two-67890")
    assert (entry.fresh_until, entry.stale_until) == (1060.0, 1090.0)
    again = Entry.from_bytes(entry.to_bytes())
    assert again == entry
    raw = capture(0, 200, [], b"\x89PNG not json", "rid", 0)
    assert raw.render("other") == b"\x89PNG not json"


def test_caller_directives() -> None:
    assert caller_directive(None) == ""
    assert caller_directive("no-store") == "bypass"
    assert caller_directive("max-age=60, No-Cache") == "refresh"
    assert caller_directive("max-age=0") == "refresh"
    assert caller_directive(None, "no-cache") == "refresh"
    assert caller_directive("no-cache, no-store") == "bypass"


def test_only_successful_provider_answers_are_storable() -> None:
    ok = [(b"Content-Type", b"application/json")]
    assert storable(SPEC, 0, 200, 1, ok, 100)
    assert not storable(SPEC, -1000, 200, 1, ok, 100)  # an error inside a 200
    assert not storable(SPEC, 0, 304, 1, ok, 100)
    assert not storable(SPEC, 0, 200, 0, ok, 100)  # a fallback or local answer: no provider said it
    assert not storable(SPEC, 0, 200, 1, [*ok, (b"Set-Cookie", b"s=1")], 100)
    assert not storable(SPEC, 0, 200, 1, ok, SPEC.max_entry + 1)
    assert serves_stale(-1003, False) and serves_stale(-1001, False) and serves_stale(-1000, False)
    assert not serves_stale(-2005, False) and not serves_stale(-1002, False) and not serves_stale(0, True)
    assert serves_stale(-1234, True)  # a configured fallback code: no target was up


def _entry(size: int, now: float, ttl: float = 60) -> Entry:
    return Entry(0, 200, (), b"x" * size, -1, now, now + ttl, now + ttl)


def test_memory_store_is_bounded_by_bytes_least_recently_used_out() -> None:
    now = time.time()
    store = MemoryCache(10_000)
    for i in range(30):
        store.set_now(f"geo.g:{i}", _entry(1000, now))
        if i >= 3:
            assert store.get_now("geo.g:0") is not None  # used again and again: never the one evicted
    assert store.bytes <= 10_000 and len(store) < 30 and store.get_now("geo.g:1") is None
    assert store.get_now("geo.g:29") is not None
    store.set_now("geo.g:huge", _entry(20_000, now))  # bigger than the whole store: not kept
    assert store.get_now("geo.g:huge") is None
    store.set_now("geo.old:1", _entry(10, now - 120))  # expired
    assert store.get_now("geo.old:1") is None
    store.set_now("geo-x.g:1", _entry(10, now))
    before = len(store)
    assert store.purge_now("geo", "g") == before - 1 and store.get_now("geo-x.g:1") is not None
    store.resize(100)
    assert store.bytes <= 100


def test_per_app_only_keeps_the_apps_own_quotas() -> None:
    checks = quota_checks("a", [], "geo", [QuotaSpec(limit="3/day", per="service"), QuotaSpec(limit="9/day")],
                          "g", [QuotaSpec(limit="1/s", per="service"), QuotaSpec(limit="2/s")])
    assert sorted(c.key for c in per_app_only(checks)) == ["m:geo.g|app:a", "svc:geo|app:a"]


async def test_single_flight_shares_one_answer_and_survives_a_follower_leaving() -> None:
    flights = SingleFlight()
    leader = flights.lead("k")
    assert flights.get("k") is leader
    followers = [asyncio.ensure_future(SingleFlight.follow(leader)) for _ in range(3)]
    await asyncio.sleep(0)
    followers[0].cancel()
    flights.land("k", leader, "answer")
    assert flights.get("k") is None and len(flights) == 0
    assert await asyncio.gather(*followers[1:]) == ["answer", "answer"]


async def test_redis_store_round_trip_purge_status(redis_url: str) -> None:
    store = RedisCache(redis_url)
    try:
        now = time.time()
        await store.set("geo.g:1", _entry(100, now))
        await store.set("geo.h:1", _entry(100, now))
        await store.set("geo-x.g:1", _entry(100, now))
        assert (await store.get("geo.g:1")) == _entry(100, now)
        assert await store.get("geo.g:none") is None
        status = await store.status()
        assert status["entries"] == 3 and status["bytes"] > 300  # type: ignore[operator]
        assert await store.purge("geo", "g") == 1
        assert await store.purge("geo") == 1
        assert await store.get("geo-x.g:1") is not None
    finally:
        await store.close()


async def test_redis_store_down_is_a_quick_miss() -> None:
    store = RedisCache(refused_url().replace("http", "redis"))
    try:
        started = time.monotonic()
        assert await store.get("geo.g:1") is None
        await store.set("geo.g:1", _entry(10, time.time()))
        assert await store.get("geo.g:1") is None
        assert time.monotonic() - started < 1.5 and store.errors == 1  # then left alone for a second
    finally:
        await store.close()
