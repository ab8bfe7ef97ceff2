"""Shaping end to end (SPEC 14): queued quotas and the provider's own quota, on real mitmdump processes
(two of them sharing one real Redis), a fake provider recording when each call reached it.

Timing is asserted from the arrival times the fake provider records, never from the suite's clock."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import RedisServer, wait_until
from tests.fakes import FakeProvider, Reply, Seen
from tests.harness import Gateway, write_rules

APPS = {"app-a": "secret-a-123", "app-b": "secret-b-456"}


class Arrivals:
    """A provider path that records the wall time each call reached it (at the provider)."""

    def __init__(self, fake: FakeProvider, path: str, reply: Reply | None = None) -> None:
        self.times: list[tuple[float, Seen]] = []
        self.lock = threading.Lock()
        self.reply = reply or Reply(200, {"ok": True})
        fake.on("*", path, self._record)

    def _record(self, seen: Seen) -> Reply:
        with self.lock:
            self.times.append((time.time(), seen))
            return self.reply

    def snapshot(self) -> list[tuple[float, Seen]]:
        with self.lock:
            return list(self.times)


def service(name: str, fake: FakeProvider, quota: str, extra: str = "") -> str:
    return f"""
        service: {name}
        hosts: [api.{name}.test]
        upstream: {{url: "{fake.url}/{name}", timeout: 5s}}
        quota: {quota}
        methods: {{m: {{path: /m}}}}
        {extra}
    """


def apps_file(gateway: str = "{}") -> str:
    lines = ["apps:"] + [f"  {app}: {{secret: {secret}}}" for app, secret in APPS.items()]
    return "\n".join(lines) + f"\ngateway: {gateway}\n"


def call(gw: Gateway, app: str, name: str, tag: str = "", timeout: float = 10) -> requests.Response:
    return requests.get(f"http://api.{name}.test/m", params={"tag": tag} if tag else None,
                        proxies=gw.proxies(app, APPS[app]), timeout=timeout)


def burst(gw_for: list[Gateway], app: str, name: str, n: int) -> list[requests.Response]:
    """n calls at once from n threads, spread over the given gateways; returns every answer."""
    answers: list[requests.Response | None] = [None] * n
    gate = threading.Barrier(n)

    def one(i: int) -> None:
        gate.wait(5)
        answers[i] = call(gw_for[i % len(gw_for)], app, name, tag=f"{app}-{i}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert all(a is not None for a in answers)
    return answers  # type: ignore[return-value]


def status(gw: Gateway) -> dict[str, Any]:
    with urllib.request.urlopen(f"{gw.admin}/status", timeout=2) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def metric(gw: Gateway, name: str, service_name: str) -> float | None:
    with urllib.request.urlopen(f"{gw.admin}/metrics", timeout=2) as answer:
        text = answer.read().decode()
    prefix = f'{name}{{service="{service_name}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return None


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer,
          confdir: Path) -> Iterator[tuple[FakeProvider, Gateway, Gateway]]:
    """One fake provider, two gateways on one Redis, every service these tests use."""
    if redis_server.proc is None:
        redis_server.start()
    fake = FakeProvider()
    rules = write_rules(tmp_path_factory.mktemp("shaping") / "rules", {
        "apps.yaml": apps_file(),
        "burst.yaml": service("burst", fake, "[{limit: 5/s, per: service, queue: 4s}]"),
        "fair.yaml": service("fair", fake, "[{limit: 10/s, per: service, queue: 5s}]"),
        "gone.yaml": service("gone", fake, "[{limit: 1/s, per: service, queue: 5s}]"),
        "counted.yaml": service("counted", fake, "[]",
                                "provider_quota: {remaining: X-RateLimit-Remaining, reset: X-RateLimit-Reset}"),
        "later.yaml": service("later", fake, "[{limit: 100/s, per: service, queue: 3s}]"),
        "nowait.yaml": service("nowait", fake, "[]"),
    })
    gateways = [Gateway(rules, confdir, redis=redis_server.url), Gateway(rules, confdir, redis=redis_server.url)]
    try:
        for gw in gateways:
            gw.start()
        yield fake, gateways[0], gateways[1]
    finally:
        for gw in gateways:
            gw.stop()
        fake.close()


def per_second(arrivals: list[tuple[float, Seen]]) -> Counter[int]:
    return Counter(int(t) for t, _ in arrivals)


# -- queue: wait for room instead of 429 ------------------------------------------------------------

def test_a_burst_waits_for_room_and_the_provider_never_sees_more_than_the_limit(
        fleet: tuple[FakeProvider, Gateway, Gateway]) -> None:
    fake, gw1, gw2 = fleet
    arrivals = Arrivals(fake, "/burst/m")
    answers = burst([gw1, gw2], "app-a", "burst", 15)
    assert [a.status_code for a in answers] == [200] * 15, [a.text for a in answers if a.status_code != 200]
    assert all(a.json()["code"] == 0 for a in answers)
    seen = arrivals.snapshot()
    assert len(seen) == 15
    busiest = max(per_second(seen).values())
    assert busiest <= 5, per_second(seen)
    first = min(t for t, _ in seen)
    waits = sorted(round(t - first, 3) for t, _ in seen)
    print("burst arrivals after the first (s):", waits)
    assert waits[-1] >= 1.0  # some calls waited into a later window rather than being refused
    hist = metric(gw1, "gateway_queue_wait_seconds_count", "burst") or 0
    hist += metric(gw2, "gateway_queue_wait_seconds_count", "burst") or 0
    assert hist >= 5


def test_one_call_of_app_b_is_not_stuck_behind_a_burst_of_app_a(fleet: tuple[FakeProvider, Gateway, Gateway]) -> None:
    fake, gw1, _ = fleet
    arrivals = Arrivals(fake, "/fair/m")
    done: list[requests.Response] = []
    # 35 calls at 10/s: 10 go at once, 25 wait over the next three window edges.
    runner = threading.Thread(target=lambda: done.extend(burst([gw1], "app-a", "fair", 35)))
    runner.start()
    # B calls once A's calls are waiting in this gateway's queue.
    wait_until(lambda: (metric(gw1, "gateway_queue_depth", "fair") or 0) >= 10, 10, what="A's calls queued")
    answer_b = call(gw1, "app-b", "fair", tag="b")
    runner.join(20)
    assert answer_b.status_code == 200, answer_b.text
    assert [a.status_code for a in done] == [200] * 35
    seen = arrivals.snapshot()
    b_at = next(t for t, s in seen if s.query.get("tag") == "b")
    a_after = [t for t, s in seen if s.query.get("tag", "").startswith("app-a") and int(t) > int(b_at)]
    # Round-robin: B goes at the first window edge after it queued, with A's head, and A's queue
    # goes on in later windows. Behind A's whole queue (first come, first served) B would go last.
    # Counted by window, not by order within one, as calls let through at one edge race each other.
    assert a_after, sorted(round(t - b_at, 3) for t, _ in seen)
    assert max(per_second(seen).values()) <= 10


def test_a_disconnecting_caller_leaves_the_queue(fleet: tuple[FakeProvider, Gateway, Gateway]) -> None:
    fake, gw1, _ = fleet
    arrivals = Arrivals(fake, "/gone/m")
    # Fill this second's room, then queue a call whose client hangs up.
    wait_until(lambda: 1 - time.time() % 1 > 0.4, 2, interval=0.01, what="0.4s clear of the second's end")
    first = call(gw1, "app-a", "gone", tag="first")
    assert first.status_code == 200
    auth = __import__("base64").b64encode(f"app-a:{APPS['app-a']}".encode()).decode()
    sock = socket.create_connection(("127.0.0.1", gw1.port), timeout=5)
    sock.sendall(f"GET http://api.gone.test/m?tag=left HTTP/1.1\r\nHost: api.gone.test\r\n"
                 f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())
    wait_until(lambda: metric(gw1, "gateway_queue_depth", "gone") == 1, 5, what="the call queued")
    sock.close()
    wait_until(lambda: metric(gw1, "gateway_queue_depth", "gone") == 0, 5, what="the call left the queue")
    # A later call is admitted at a later edge; the one that left never reached the provider.
    later = call(gw1, "app-a", "gone", tag="later")
    assert later.status_code == 200, later.text
    tags = [s.query.get("tag") for _, s in arrivals.snapshot()]
    assert tags == ["first", "later"], tags


# -- the provider's own quota -----------------------------------------------------------------------

def test_remaining_zero_stops_the_whole_fleet_until_the_reset(fleet: tuple[FakeProvider, Gateway, Gateway]) -> None:
    fake, gw1, gw2 = fleet
    arrivals = Arrivals(fake, "/counted/m", Reply(200, {"ok": True},
                                                   headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2"}))
    spent = call(gw1, "app-a", "counted", tag="spent")
    assert spent.status_code == 200
    assert metric(gw1, "gateway_provider_quota_remaining", "counted") == 0
    arrivals.reply = Reply(200, {"ok": True}, headers={"X-RateLimit-Remaining": "7"})
    # The other gateway learned it through Redis: it answers -1005 at once, without calling.
    refused = call(gw2, "app-b", "counted", tag="refused")
    assert refused.status_code == 503, refused.text
    body = refused.json()
    assert body["code"] == -1005 and body["source"] == "upstream"
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    assert status(gw2)["shaping"]["fleet_channel"] == "subscribed"
    learned = status(gw2)["shaping"]["provider_quota"]["counted"]
    assert learned["blocked"] is True and learned["remaining"] == 0
    assert [s.query.get("tag") for _, s in arrivals.snapshot()] == ["spent"]
    # After the reset, calls flow again.
    wait_until(lambda: call(gw2, "app-b", "counted", tag="after").status_code == 200, 5, interval=0.2,
               what="calls after the reset")
    seen = arrivals.snapshot()
    assert [s.query.get("tag") for _, s in seen] == ["spent", "after"]
    assert seen[1][0] - seen[0][0] >= 1.9
    assert wait_until(lambda: metric(gw2, "gateway_provider_quota_remaining", "counted") == 7, 2)


def test_retry_after_is_honoured_by_waiting_or_refusing(fleet: tuple[FakeProvider, Gateway, Gateway]) -> None:
    fake, gw1, _ = fleet
    later = Arrivals(fake, "/later/m", Reply(429, {"error": "slow down"}, headers={"Retry-After": "1"}))
    first = call(gw1, "app-a", "later", tag="first")
    assert first.json()["code"] == -1005
    later.reply = Reply(200, {"ok": True})
    # A queued entry waits out the provider's Retry-After, then goes through.
    second = call(gw1, "app-a", "later", tag="second")
    assert second.status_code == 200 and second.json()["code"] == 0
    seen = later.snapshot()
    assert [s.query.get("tag") for _, s in seen] == ["first", "second"]
    assert seen[1][0] - seen[0][0] >= 0.95
    # Without a queue the same learned fact refuses at once, and nothing reaches the provider.
    nowait = Arrivals(fake, "/nowait/m", Reply(429, {"error": "slow down"}, headers={"Retry-After": "30"}))
    assert call(gw1, "app-a", "nowait", tag="one").json()["code"] == -1005
    again = call(gw1, "app-a", "nowait", tag="two")
    assert again.status_code == 503 and again.json()["code"] == -1005
    assert 29 <= int(again.headers["Retry-After"]) <= 30
    assert [s.query.get("tag") for _, s in nowait.snapshot()] == ["one"]


# -- queue_max ---------------------------------------------------------------------------------------

def test_a_full_queue_refuses_at_once(tmp_path: Path, confdir: Path, fake: FakeProvider) -> None:
    arrivals = Arrivals(fake, "/small/m")
    rules = write_rules(tmp_path / "rules", {
        "apps.yaml": apps_file("{queue_max: 1}"),
        "small.yaml": service("small", fake, "[{limit: 1/s, per: service, queue: 5s}]"),
    })
    with Gateway(rules, confdir) as gw:
        wait_until(lambda: 1 - time.time() % 1 > 0.5, 2, interval=0.01, what="0.5s clear of the second's end")
        assert call(gw, "app-a", "small", tag="admitted").status_code == 200
        waiting: list[requests.Response] = []
        runner = threading.Thread(target=lambda: waiting.append(call(gw, "app-a", "small", tag="queued")))
        runner.start()
        wait_until(lambda: metric(gw, "gateway_queue_depth", "small") == 1, 5, what="one call queued")
        full = call(gw, "app-b", "small", tag="full")
        runner.join(10)
        assert full.status_code == 429
        assert full.json()["code"] == -2004 and "queue is full" in full.json()["message"]
        assert int(full.headers["Retry-After"]) >= 1
        assert waiting[0].status_code == 200
        seen = arrivals.snapshot()
        assert [s.query.get("tag") for _, s in seen] == ["admitted", "queued"]
        # The full queue answered before the queued call was admitted at the next second.
        assert int(seen[1][0]) > int(seen[0][0])
        assert status(gw)["shaping"]["queue"]["max"] == 1
