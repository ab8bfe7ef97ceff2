"""Timeouts, retries, health, failover and fallback (SPEC 3 `upstream`/`retry`/`health`/`fallback`,
SPEC 9), end to end: a real mitmdump with the chain, scripted fake providers on 127.0.0.1.

Timing assertions are upper bounds the contract promises ("the call ends within its deadline plus
0.5 s") or gaps the contract requires (an honoured Retry-After), never claims about speed."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import wait_until
from tests.fakes import Blackhole, FakeProvider, Reply, Seen, refused_url
from tests.harness import Gateway, write_rules

APP, SECRET = "order-service", "s3cret-order"
SLACK = 0.5  # what the contract allows past a deadline (scheduling, the proxy hop)

APPS_YAML = f"""
    apps:
      {APP}: {{secret: {SECRET}}}
    gateway: {{require_app: true}}
"""


def rules(tmp_path: Path, **services: str) -> Path:
    """A rules directory: the caller app plus one file per service (name -> YAML text)."""
    files = {"apps.yaml": APPS_YAML}
    files.update({f"{name}.yaml": text for name, text in services.items()})
    return write_rules(tmp_path / "rules", files)


def same_upstream(url: str, names: tuple[str, ...], upstream: str, extra: str = "") -> dict[str, str]:
    """Services that share one upstream, each on host api.<name>.test: one per scenario, so passive
    health marking by one scenario's failures does not turn the next one into a fallback answer.
    `upstream` is added to the `upstream:` mapping, `extra` is more top-level YAML."""
    return {
        name: f"service: {name}\nhosts: [api.{name}.test]\nupstream: {{url: \"{url}\", {upstream}}}\n{extra}\n"
        for name in names
    }


def warm(gw: Gateway) -> Gateway:
    """One call the gateway answers itself (407: no app credentials), so the timed calls after it
    measure the call, not the new process settling in after it started listening."""
    r = requests.get("http://warm-up.test/", proxies=gw.proxies(), timeout=20)
    assert r.status_code == 407, r.text[:300]
    return gw


def call(gw: Gateway, method: str, url: str, request_id: str, **kwargs: Any) -> tuple[requests.Response, float]:
    """One call through the gateway; returns the answer and how long it took. The client's own timeout
    is far above every deadline here, so a hang shows up as a failed bound, not a stuck test."""
    started = time.monotonic()
    r = requests.request(method, url, proxies=gw.proxies(APP, SECRET), timeout=20,
                         headers={"X-Request-ID": request_id, **kwargs.pop("headers", {})}, **kwargs)
    return r, time.monotonic() - started


def envelope(r: requests.Response, request_id: str) -> dict[str, Any]:
    """The answer is the gateway's JSON envelope (never mitmproxy's HTML 502) with the request id."""
    assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) >= {"code", "message", "data", "request_id"}, body
    assert body["request_id"] == request_id
    assert r.headers["X-Request-ID"] == request_id
    if body["code"] != 0:
        assert r.headers["X-Gateway-Code"] == str(body["code"])
        assert body["source"] == "upstream"
    return body


class Script:
    """A handler that plays replies in order (the last one repeats) and records when each hit came."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.times: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, seen: Seen) -> Reply:
        with self.lock:
            self.times.append(time.monotonic())
            index = min(len(self.times), len(self.replies)) - 1
            return self.replies[index]


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    yield hole
    hole.close()


def fake_on_port(port: int) -> FakeProvider:
    """A FakeProvider on a chosen port (one that was refused until now): the primary coming back."""
    return FakeProvider(port)


# -- 1. timeouts ---------------------------------------------------------------------------------


def test_connect_timeout_against_a_blackhole_is_bounded_and_retried_for_any_method(
        tmp_path: Path, confdir: Path, blackhole: Blackhole) -> None:
    # timeout 300ms x 2 attempts, waits of at most 100ms: default deadline 0.7 s. One service per
    # method, so passive health marking by the first call does not shape the second.
    services = same_upstream(blackhole.url, ("hole", "hole2"), "timeout: 300ms",
                             "retry: {attempts: 2, backoff: 50ms, max_backoff: 100ms}")
    with Gateway(rules(tmp_path, **services), confdir) as gw:
        warm(gw)
        for method, host, rid in (("GET", "api.hole.test", "hole-get-0001"),
                                  ("POST", "api.hole2.test", "hole-post-0001")):
            r, took = call(gw, method, f"http://{host}/anything", rid, data=b"{}" if method == "POST" else None)
            body = envelope(r, rid)
            # A connect that never completed is a connect failure (-1003), not a provider timeout.
            assert body["code"] == -1003 and r.status_code == 503, body
            assert took <= 0.7 + SLACK, f"{method} took {took:.2f}s"
            # Nothing was sent on a connect that never completed: even a POST is retried.
            assert r.headers["X-Gateway-Attempts"] == "2", (method, body)
            line = gw.log_for(rid)
            assert line["attempts"] == 2 and line["target"] == "primary", line
            assert line["code"] == body["code"]


def test_read_timeout_against_a_hanging_provider_ends_within_the_deadline(
        tmp_path: Path, confdir: Path, fake: FakeProvider) -> None:
    fake.on("*", "/slow", Reply(action="hang"))
    # 3 attempts of 400ms would need 1.2 s plus waits; the deadline of 1 s cuts the last one short.
    services = same_upstream(fake.url, ("slow", "slow2"), "timeout: 400ms",
                             "retry: {attempts: 3, backoff: 20ms, max_backoff: 50ms, deadline: 1s}")
    with Gateway(rules(tmp_path, **services), confdir) as gw:
        warm(gw)
        r, took = call(gw, "GET", "http://api.slow.test/slow", "slow-get-00001")
        body = envelope(r, "slow-get-00001")
        assert body["code"] == -1001 and r.status_code == 504, body
        assert took <= 1.0 + SLACK, f"took {took:.2f}s"
        attempts = int(r.headers["X-Gateway-Attempts"])
        assert 2 <= attempts <= 3
        assert len(fake.hits("/slow")) == attempts  # one request per attempt, no hidden re-sends
        line = gw.log_for("slow-get-00001")
        assert line["attempts"] == attempts and line["target"] == "primary", line

        # The provider may have acted on a POST that timed out: not retried.
        r, took = call(gw, "POST", "http://api.slow2.test/slow", "slow-post-0001", json={"a": 1})
        body = envelope(r, "slow-post-0001")
        assert body["code"] == -1001 and r.headers["X-Gateway-Attempts"] == "1", body
        assert took <= 0.4 + SLACK
        assert len(fake.hits("/slow")) == attempts + 1


# -- 2. fail, then succeed; methods ------------------------------------------------------------


def test_get_retried_until_success_post_only_after_a_failed_connect(tmp_path: Path, confdir: Path,
                                                                      fake: FakeProvider) -> None:
    flaky = Script(Reply(503, {"busy": True}), Reply(503, {"busy": True}), Reply(200, {"n": 3}))
    fake.on("GET", "/flaky", flaky)
    fake.on("POST", "/order", Reply(503, {"busy": True}))
    retry = "retry: {attempts: 3, backoff: 20ms, max_backoff: 50ms}"
    up = f"""
        service: flaky
        hosts: [api.flaky.test]
        upstream: {{url: "{fake.url}", timeout: 1s}}
        {retry}
    """
    down = f"""
        service: gone
        hosts: [api.gone.test]
        upstream: {{url: "{refused_url()}", timeout: 1s}}
        {retry}
    """
    with Gateway(rules(tmp_path, flaky=up, gone=down), confdir) as gw:
        warm(gw)
        r, _ = call(gw, "GET", "http://api.flaky.test/flaky", "flaky-get-0001")
        body = envelope(r, "flaky-get-0001")
        assert r.status_code == 200 and body["code"] == 0 and body["data"] == {"n": 3}
        assert r.headers["X-Gateway-Attempts"] == "3" and len(flaky.times) == 3
        assert gw.log_for("flaky-get-0001")["attempts"] == 3

        r, _ = call(gw, "POST", "http://api.flaky.test/order", "flaky-post-0001", json={"item": 1})
        body = envelope(r, "flaky-post-0001")
        assert body["code"] == -1003 and r.status_code == 503, body
        assert r.headers["X-Gateway-Attempts"] == "1"
        assert len(fake.hits("/order")) == 1  # the provider saw it once: a POST is not repeated

        r, _ = call(gw, "POST", "http://api.gone.test/order", "gone-post-0001", json={"item": 1})
        body = envelope(r, "gone-post-0001")
        assert body["code"] == -1003, body
        assert r.headers["X-Gateway-Attempts"] == "3"  # refused: nothing was sent, so retried
        line = gw.log_for("gone-post-0001")
        assert line["attempts"] == 3 and line["target"] == "primary" and line["code"] == -1003


# -- 3. error codes in a 200 body --------------------------------------------------------------


def test_wechat_system_busy_in_a_200_body_is_retried_and_counts_against_health(
        tmp_path: Path, confdir: Path, fake: FakeProvider) -> None:
    busy = {"errcode": -1, "errmsg": "system busy"}
    api = Script(Reply(200, busy), Reply(200, busy), Reply(200, {"errcode": 0, "errmsg": "ok", "menu": [1]}))
    fake.on("GET", "/cgi-bin/menu/get", api)
    fake.on("GET", "/health", Reply(200, "ok"))
    # Probes are configured (so only probes bring the target back) but far apart: after the first
    # round the live calls alone move the health counters.
    svc = f"""
        service: wx
        hosts: [api.wx.test]
        upstream: {{url: "{fake.url}", timeout: 1s}}
        envelope: wechat
        retry: {{attempts: 3, backoff: 20ms, max_backoff: 50ms, on: [-1003]}}
        health: {{path: /health, interval: 1h, timeout: 1s, unhealthy_after: 2}}
        fallback: {{code: -1003, message: wx is resting}}
    """
    with Gateway(rules(tmp_path, wx=svc), confdir) as gw:
        warm(gw)
        wait_until(lambda: fake.hits("/health"), 10, what="the first health probe")
        r, _ = call(gw, "GET", "http://api.wx.test/cgi-bin/menu/get", "wx-busy-00001")
        body = envelope(r, "wx-busy-00001")
        assert body["code"] == 0 and body["data"] == {"menu": [1]}, body
        assert r.headers["X-Gateway-Attempts"] == "3" and len(api.times) == 3
        # Two "system busy" answers were two health failures: unhealthy_after 2 took the only target
        # down, so the next call gets the fallback without reaching the provider.
        r, _ = call(gw, "GET", "http://api.wx.test/cgi-bin/menu/get", "wx-busy-00002")
        body = envelope(r, "wx-busy-00002")
        assert body["code"] == -1003 and body["message"] == "wx is resting", body
        assert len(api.times) == 3
        assert "marked down" in gw.output()


# -- 4. Retry-After ----------------------------------------------------------------------------


def test_retry_after_up_to_max_backoff_is_honoured_a_longer_one_is_not(tmp_path: Path, confdir: Path,
                                                                         fake: FakeProvider) -> None:
    short = Script(Reply(503, {"busy": 1}, headers={"Retry-After": "1"}), Reply(200, {"ok": 1}))
    long = Script(Reply(503, {"busy": 1}, headers={"Retry-After": "30"}), Reply(200, {"ok": 2}))
    fake.on("GET", "/short", short)
    fake.on("GET", "/long", long)
    svc = f"""
        service: ra
        hosts: [api.ra.test]
        upstream: {{url: "{fake.url}", timeout: 1s}}
        retry: {{attempts: 2, backoff: 20ms, max_backoff: 2s}}
    """
    with Gateway(rules(tmp_path, ra=svc), confdir) as gw:
        warm(gw)
        r, _ = call(gw, "GET", "http://api.ra.test/short", "ra-short-0001")
        assert envelope(r, "ra-short-0001")["code"] == 0 and r.headers["X-Gateway-Attempts"] == "2"
        assert short.times[1] - short.times[0] >= 0.95  # the provider asked for 1 s
        r, _ = call(gw, "GET", "http://api.ra.test/long", "ra-long-00001")
        assert envelope(r, "ra-long-00001")["code"] == 0 and r.headers["X-Gateway-Attempts"] == "2"
        # 30 s is past max_backoff: the ordinary backoff (at most 20ms here) applies instead.
        assert long.times[1] - long.times[0] < 1.0


# -- 5. broken answers -------------------------------------------------------------------------


def test_dropped_connection_and_garbage_answer_get_clear_codes(tmp_path: Path, confdir: Path,
                                                                fake: FakeProvider) -> None:
    fake.on("*", "/drop", Reply(action="close"))
    fake.on("*", "/junk", Reply(action="garbage"))
    services = same_upstream(fake.url, ("drop", "drop2", "junk"), "timeout: 1s",
                             "retry: {attempts: 2, backoff: 20ms, max_backoff: 50ms}")
    with Gateway(rules(tmp_path, **services), confdir) as gw:
        warm(gw)
        r, took = call(gw, "GET", "http://api.drop.test/drop", "broken-drop-01")
        body = envelope(r, "broken-drop-01")
        assert body["code"] == -1003 and r.status_code == 503, body
        assert r.headers["X-Gateway-Attempts"] == "2"
        assert len(fake.hits("/drop")) == 2  # one request per attempt: no hidden re-sends by the client
        assert took <= 2 * 1.0 + 0.05 + SLACK

        r, took = call(gw, "POST", "http://api.drop2.test/drop", "broken-drop-02", json={})
        body = envelope(r, "broken-drop-02")
        assert body["code"] == -1003 and r.headers["X-Gateway-Attempts"] == "1", body  # sent: not retried
        assert len(fake.hits("/drop")) == 3

        r, took = call(gw, "GET", "http://api.junk.test/junk", "broken-junk-01")
        body = envelope(r, "broken-junk-01")
        assert body["code"] == -1004 and r.status_code == 502, body
        assert took <= 2 * 1.0 + 0.05 + SLACK
        line = gw.log_for("broken-junk-01")
        assert line["code"] == -1004 and line["error"], line


def test_a_pooled_connection_dropped_unread_is_resent_once_for_get_never_for_post(
        tmp_path: Path, confdir: Path, fake: FakeProvider) -> None:
    # The provider answers on a keep-alive connection, then drops the next request on it unanswered,
    # as a server closing an idle connection at the moment it is reused would.
    get = Script(Reply(200, {"n": 1}), Reply(action="close"), Reply(200, {"n": 3}))
    post = Script(Reply(200, {"n": 1}), Reply(action="close"), Reply(200, {"n": 3}))
    fake.on("GET", "/v1/get", get)
    fake.on("POST", "/v1/post", post)
    # No retries at all: only the re-send on a fresh connection can rescue the GET.
    services = same_upstream(fake.url, ("pool", "pool2"), "timeout: 1s")
    with Gateway(rules(tmp_path, **services), confdir) as gw:
        warm(gw)
        for n in (1, 2):
            r, _ = call(gw, "GET", "http://api.pool.test/v1/get", f"pool-get-{n:04d}")
            body = envelope(r, f"pool-get-{n:04d}")
            assert body["code"] == 0 and r.headers["X-Gateway-Attempts"] == "1", body
        assert body["data"] == {"n": 3} and len(get.times) == 3
        for n in (1, 2):
            r, _ = call(gw, "POST", "http://api.pool2.test/v1/post", f"pool-post-{n:04d}", json={})
            body = envelope(r, f"pool-post-{n:04d}")
        assert body["code"] == -1003 and r.headers["X-Gateway-Attempts"] == "1", body
        assert len(post.times) == 2  # the provider may have read it: not sent again


# -- 6. backup channel -------------------------------------------------------------------------


def _signature_ok(seen: Seen, secret: str) -> bool:
    ts, nonce = seen.headers["x-timestamp"], seen.headers["x-nonce"]
    text = f"{seen.method}\n{seen.path}\n{ts}\n{nonce}\n{hashlib.sha256(seen.body).hexdigest()}"
    expected = hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, seen.headers["x-signature"])


def test_failover_to_backup_and_back_when_probes_see_the_primary_again(
        tmp_path: Path, confdir: Path, fake: FakeProvider) -> None:
    backup = fake
    backup.on("GET", "/health", Reply(200, "ok"))
    backup.on("POST", "/v1/pay", Reply(200, {"served_by": "backup"}))
    primary_url = refused_url()
    port = int(primary_url.rsplit(":", 1)[1])
    svc = f"""
        service: pay
        hosts: [api.pay.test]
        upstream: {{url: "{primary_url}", backup: "{backup.url}", timeout: 500ms}}
        credentials: {{type: static, header: X-Api-Key, value: "${{PAY_KEY}}"}}
        signing: {{type: hmac_sha256, secret: "${{PAY_SIGNING}}"}}
        retry: {{attempts: 2, backoff: 20ms, max_backoff: 50ms}}
        health: {{path: /health, interval: 200ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 2}}
    """
    env = {"PAY_KEY": "pay-key-0123456789", "PAY_SIGNING": "pay-signing-secret-42"}
    primary: FakeProvider | None = None
    with Gateway(rules(tmp_path, pay=svc), confdir, env=env) as gw:
        warm(gw)
        try:
            # Refused probes take the primary down after unhealthy_after rounds.
            wait_until(lambda: "primary marked down" in gw.output(), 10, what="the primary marked down")
            for n in range(3):
                rid = f"pay-backup-{n:04d}"
                r, _ = call(gw, "POST", "http://api.pay.test/v1/pay", rid, json={"amount": n})
                body = envelope(r, rid)
                assert body["code"] == 0 and body["data"] == {"served_by": "backup"}, body
                assert r.headers["X-Gateway-Attempts"] == "1"
                assert gw.log_for(rid)["target"] == "backup"
            calls = backup.hits("/v1/pay")
            assert len(calls) == 3
            for seen in calls:  # the backup gets the service's credentials and signature, freshly made
                assert seen.headers["x-api-key"] == "pay-key-0123456789"
                assert _signature_ok(seen, "pay-signing-secret-42"), seen.headers
                assert "proxy-authorization" not in seen.headers
            assert len({s.headers["x-nonce"] for s in calls}) == 3

            # The primary comes back on its address; probes bring it up after healthy_after successes.
            primary = fake_on_port(port)
            primary.on("GET", "/health", Reply(200, "ok"))
            primary.on("POST", "/v1/pay", Reply(200, {"served_by": "primary"}))
            wait_until(lambda: len(primary.hits("/health")) >= 2, 10, what="probes of the returning primary")
            wait_until(lambda: "primary is up again" in gw.output(), 10, what="the primary up again")
            r, _ = call(gw, "POST", "http://api.pay.test/v1/pay", "pay-primary-01", json={"amount": 9})
            body = envelope(r, "pay-primary-01")
            assert body["data"] == {"served_by": "primary"}, body
            assert gw.log_for("pay-primary-01")["target"] == "primary"
            seen = primary.hits("/v1/pay")[-1]
            assert seen.headers["x-api-key"] == "pay-key-0123456789" and _signature_ok(seen, "pay-signing-secret-42")
            assert len(backup.hits("/v1/pay")) == 3
        finally:
            if primary is not None:
                primary.close()


def test_retries_fail_over_to_the_backup_and_live_failures_mark_the_primary_down(
        tmp_path: Path, confdir: Path, fake: FakeProvider) -> None:
    backup = fake
    backup.on("GET", "/v1/item", Reply(200, {"served_by": "backup"}))
    # No probes: live failures alone mark the primary down (unhealthy_after defaults to 3).
    # "shop" retries connect failures; "shop2" retries only 503s, yet its refused connects must still
    # count against the primary's health.
    services = {
        name: f"""
            service: {name}
            hosts: [api.{name}.test]
            upstream: {{url: "{refused_url()}", backup: "{backup.url}", timeout: 500ms}}
            retry: {{attempts: 3, backoff: 20ms, max_backoff: 50ms, on: {on}}}
        """
        for name, on in (("shop", "[connect, timeout, 503]"), ("shop2", "[503]"))
    }
    with Gateway(rules(tmp_path, **services), confdir) as gw:
        warm(gw)
        # Each call's retry goes to the backup while the primary is still counted as up.
        for n in range(3):
            rid = f"shop-failover-{n}"
            r, _ = call(gw, "GET", "http://api.shop.test/v1/item", rid)
            body = envelope(r, rid)
            assert body["code"] == 0 and body["data"] == {"served_by": "backup"}, body
            assert r.headers["X-Gateway-Attempts"] == "2"
            assert gw.log_for(rid)["target"] == "backup"
        # Three failed attempts on the primary: it is down, calls go straight to the backup.
        r, _ = call(gw, "GET", "http://api.shop.test/v1/item", "shop-direct-01")
        assert envelope(r, "shop-direct-01")["code"] == 0 and r.headers["X-Gateway-Attempts"] == "1"
        assert gw.log_for("shop-direct-01")["target"] == "backup"
        assert len(backup.hits("/v1/item")) == 4

        for n in range(3):  # connect failures not in `on`: no retry, but each counts against the primary
            rid = f"shop2-refused-{n}"
            r, _ = call(gw, "GET", "http://api.shop2.test/v1/item", rid)
            body = envelope(r, rid)
            assert body["code"] == -1003 and r.headers["X-Gateway-Attempts"] == "1", body
        r, _ = call(gw, "GET", "http://api.shop2.test/v1/item", "shop2-backup-01")
        assert envelope(r, "shop2-backup-01")["code"] == 0
        assert gw.log_for("shop2-backup-01")["target"] == "backup"


def test_a_large_answer_arriving_in_pieces_is_passed_on_whole(tmp_path: Path, confdir: Path,
                                                              fake: FakeProvider) -> None:
    items = [{"id": n, "name": "x" * 40} for n in range(20000)]  # about 1 MB of JSON
    fake.on("GET", "/v1/big", Reply(200, {"items": items}))
    svc = f"""
        service: big
        hosts: [api.big.test]
        upstream: {{url: "{fake.url}", timeout: 5s}}
    """
    with Gateway(rules(tmp_path, big=svc), confdir) as gw:
        warm(gw)
        r, _ = call(gw, "GET", "http://api.big.test/v1/big", "big-answer-01")
        body = envelope(r, "big-answer-01")
        assert body["code"] == 0 and body["data"] == {"items": items}


# -- 7. fallback -------------------------------------------------------------------------------


def test_no_healthy_target_gives_the_fallback_at_once_without_contacting_the_provider(
        tmp_path: Path, confdir: Path, fake: FakeProvider) -> None:
    second = FakeProvider()
    try:
        for provider in (fake, second):
            provider.on("GET", "/health", Reply(503, "down for maintenance"))
            provider.on("GET", "/v1/thing", Reply(200, {"would": "answer"}))
        svc = f"""
            service: maps
            hosts: [api.maps.test]
            upstream: {{url: "{fake.url}", backup: "{second.url}", timeout: 2s}}
            retry: {{attempts: 3, backoff: 100ms, max_backoff: 200ms}}
            health: {{path: /health, interval: 200ms, timeout: 200ms, unhealthy_after: 1, healthy_after: 2}}
            fallback: {{code: -1003, message: maps is temporarily unavailable}}
        """
        with Gateway(rules(tmp_path, maps=svc), confdir) as gw:
            warm(gw)
            wait_until(lambda: "primary marked down" in gw.output() and "backup marked down" in gw.output(),
                       10, what="both targets marked down")
            for n in range(2):
                rid = f"maps-fallback-{n}"
                r, took = call(gw, "GET", "http://api.maps.test/v1/thing", rid)
                body = envelope(r, rid)
                assert body["code"] == -1003 and body["message"] == "maps is temporarily unavailable", body
                assert r.status_code == 503
                assert took < 1.0  # at once: not after a 2 s timeout, let alone retries
                line = gw.log_for(rid)
                assert line["attempts"] == 0 and line["code"] == -1003, line
            assert fake.hits("/v1/thing") == [] and second.hits("/v1/thing") == []
    finally:
        second.close()


# -- 8. the deadline ---------------------------------------------------------------------------


def test_a_wait_that_would_pass_the_deadline_is_not_started(tmp_path: Path, confdir: Path,
                                                             fake: FakeProvider) -> None:
    # Retry-After 3 s is within max_backoff (so it would be honoured), but the deadline is 1 s.
    api = Script(Reply(503, {"busy": 1}, headers={"Retry-After": "3"}), Reply(200, {"late": True}))
    fake.on("GET", "/soon", api)
    svc = f"""
        service: dl
        hosts: [api.dl.test]
        upstream: {{url: "{fake.url}", timeout: 500ms}}
        retry: {{attempts: 3, backoff: 20ms, max_backoff: 5s, deadline: 1s}}
    """
    with Gateway(rules(tmp_path, dl=svc), confdir) as gw:
        warm(gw)
        r, took = call(gw, "GET", "http://api.dl.test/soon", "deadline-00001")
        body = envelope(r, "deadline-00001")
        assert body["code"] == -1003 and r.headers["X-Gateway-Attempts"] == "1", body
        assert took < 1.0  # failed at once instead of sleeping into the deadline
        assert len(api.times) == 1
        line = gw.log_for("deadline-00001")
        assert "deadline" in line["error"], line

