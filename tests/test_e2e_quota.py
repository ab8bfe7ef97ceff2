"""Quotas, the state store and signed requests end to end (SPEC 3, 7, 8): real mitmdump processes
sharing one real Redis, a fake provider behind them, real HTTP clients in front."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import pytest
import requests

from addons.identity.signed import sign
from tests.conftest import RedisServer, wait_until
from tests.fakes import FakeProvider, Reply
from tests.harness import Gateway, write_rules

APPS = {"app-a": "secret-a-123", "app-b": "secret-b-456", "app-c": "secret-c-789"}
RATELIMIT = re.compile(r'^"(?P<name>[^"]+)";r=(?P<r>\d+);t=(?P<t>\d+)$')


def service(name: str, fake: FakeProvider, quota: str = "[]", methods: str = "") -> str:
    methods = methods or "{m1: {path: /m1}, m2: {path: /m2}}"
    return f"""
        service: {name}
        hosts: [api.{name}.test]
        upstream: {{url: "{fake.url}/{name}", timeout: 5s}}
        quota: {quota}
        methods: {methods}
    """


def apps_file(gateway: str = "{}", quotas: dict[str, str] | None = None) -> str:
    quotas = quotas or {}
    lines = ["apps:"]
    for app, secret in APPS.items():
        lines.append(f"  {app}: {{secret: {secret}, quota: {quotas.get(app, '[]')}}}")
    lines.append(f"gateway: {gateway}")
    return "\n".join(lines) + "\n"


def serve_all(fake: FakeProvider, *services: str) -> None:
    for name in services:
        for method in ("m1", "m2"):
            fake.on("*", f"/{name}/{method}", Reply(200, {"service": name, "method": method}))


def get(gw: Gateway, app: str, service_name: str, method: str = "m1") -> requests.Response:
    return requests.get(f"http://api.{service_name}.test/{method}", proxies=gw.proxies(app, APPS[app]), timeout=10)


def ratelimit(response: requests.Response | httpx.Response) -> tuple[str, int, int]:
    """(policy name, remaining, seconds to reset) from the `RateLimit` header."""
    match = RATELIMIT.match(response.headers["RateLimit"])
    assert match, response.headers["RateLimit"]
    return match["name"], int(match["r"]), int(match["t"])


def assert_refused(response: requests.Response | httpx.Response, policy: str, limit: int, window: int) -> None:
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["code"] == -2004 and body["source"] == "caller"
    assert response.headers["X-Gateway-Code"] == "-2004"
    assert response.headers["RateLimit-Policy"] == f'"{policy}";q={limit};w={window}'
    name, remaining, reset = ratelimit(response)
    assert (name, remaining) == (policy, 0)
    assert 1 <= reset <= window
    assert int(response.headers["Retry-After"]) == reset


def clear_of_window_edge(window: int, margin: float) -> None:
    """Counting assertions need every call in one window: start at least `margin` s before it ends."""
    wait_until(lambda: window - time.time() % window > margin, timeout=margin + 2, interval=0.01,
               what=f"{margin}s clear of the {window}s window's end")


def start(gateways: list[Gateway], rules: Path, confdir: Path, redis: str = "") -> Gateway:
    gw = Gateway(rules, confdir, redis=redis).start()
    gateways.append(gw)
    return gw


# -- 1. two instances, one Redis: exactly the limit under concurrent load --------------------------

def test_two_instances_on_one_redis_admit_exactly_the_limit(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                                            redis_url: str, gateways: list[Gateway]) -> None:
    serve_all(fake, "alpha")
    rules = write_rules(tmp_path / "rules", {
        "alpha.yaml": service("alpha", fake, "[{limit: 50/hour, per: service}]"),
        "apps.yaml": apps_file(),
    })
    a = start(gateways, rules, confdir, redis=redis_url)
    b = start(gateways, rules, confdir, redis=redis_url)

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        clients = [httpx.AsyncClient(proxy=gw.proxy(app, APPS[app]), limits=limits, timeout=30)
                   for gw in (a, b) for app in ("app-a", "app-b")]
        try:
            return await asyncio.gather(*(clients[i % 4].get(f"http://api.alpha.test/m{1 + i % 2}")
                                          for i in range(200)))
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))

    clear_of_window_edge(3600, 30)
    responses = asyncio.run(burst())

    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(admitted) == 50, sorted({r.status_code for r in responses})
    assert len(refused) == 150
    for r in refused:
        assert_refused(r, "alpha/hour", 50, 3600)
    assert all(r.json()["code"] == 0 for r in admitted)
    # Exact shared counting: every admitted call saw a different remaining count, 49 down to 0.
    assert sorted(ratelimit(r)[1] for r in admitted) == list(range(50))
    assert not any("X-Gateway-Degraded" in r.headers for r in responses)
    assert len(fake.hits()) == 50
    # Each instance answered its 100: counted per process, they would have admitted 50 each.
    for gw in (a, b):
        wait_until(lambda gw=gw: len(gw.log_lines()) == 100, what=f"100 access-log lines of {gw.port}")
    assert sum(line["code"] == 0 for gw in (a, b) for line in gw.log_lines()) == 50


# -- 2. all or nothing across method and service quotas ---------------------------------------------

@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_refused_call_counts_against_no_quota(backend: str, tmp_path: Path, confdir: Path,
                                                fake: FakeProvider, request: pytest.FixtureRequest,
                                                gateways: list[Gateway]) -> None:
    redis = request.getfixturevalue("redis_url") if backend == "redis" else ""
    serve_all(fake, "alpha")
    rules = write_rules(tmp_path / "rules", {
        "alpha.yaml": service("alpha", fake, "[{limit: 3/hour, per: service}]",
                              "{m1: {path: /m1, quota: [{limit: 2/hour, per: app}]}, m2: {path: /m2}}"),
        "apps.yaml": apps_file(),
    })
    gw = start(gateways, rules, confdir, redis=redis)
    clear_of_window_edge(3600, 30)

    assert [get(gw, "app-a", "alpha", "m1").status_code for _ in range(2)] == [200, 200]
    # The method quota is full: these are refused by it, and must not take the service's last slot.
    for _ in range(5):
        assert_refused(get(gw, "app-a", "alpha", "m1"), "alpha.m1/app/hour", 2, 3600)
    # So the service quota (3) has exactly one call left, for the method without a quota of its own.
    first = get(gw, "app-a", "alpha", "m2")
    assert first.status_code == 200
    assert ratelimit(first)[:2] == ("alpha/hour", 0)
    assert_refused(get(gw, "app-a", "alpha", "m2"), "alpha/hour", 3, 3600)
    # The method quota is per app, but the service's is spent for everyone: the service quota names itself.
    assert_refused(get(gw, "app-b", "alpha", "m1"), "alpha/hour", 3, 3600)
    assert len(fake.hits()) == 3


# -- 3. app quota across services; per-app vs per-service; the tightest quota on admitted calls -----

@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_app_and_service_scopes(backend: str, tmp_path: Path, confdir: Path, fake: FakeProvider,
                                request: pytest.FixtureRequest, gateways: list[Gateway]) -> None:
    redis = request.getfixturevalue("redis_url") if backend == "redis" else ""
    serve_all(fake, "alpha", "beta", "gamma")
    rules = write_rules(tmp_path / "rules", {
        "alpha.yaml": service("alpha", fake, "[{limit: 100/hour, per: service}]"),
        "beta.yaml": service("beta", fake),
        "gamma.yaml": service("gamma", fake, "[{limit: 3/hour, per: app}, {limit: 5/hour, per: service}]"),
        "apps.yaml": apps_file(quotas={"app-a": "[{limit: 4/hour}]"}),
    })
    gw = start(gateways, rules, confdir, redis=redis)
    clear_of_window_edge(3600, 30)

    # app-a's own quota (4/hour) counts it across every service.
    seen = []
    for svc in ("alpha", "beta", "alpha", "beta"):
        r = get(gw, "app-a", svc)
        assert r.status_code == 200
        seen.append(ratelimit(r)[:2])
    # alpha's service quota has 99, 98 left: the app's own is tighter on every call.
    assert seen == [("app/hour", 3), ("app/hour", 2), ("app/hour", 1), ("app/hour", 0)]
    assert_refused(get(gw, "app-a", "beta"), "app/hour", 4, 3600)
    assert_refused(get(gw, "app-a", "alpha"), "app/hour", 4, 3600)
    # Other apps have no app quota: app-a's exhaustion does not touch them.
    assert get(gw, "app-b", "beta").status_code == 200
    assert "RateLimit" not in get(gw, "app-b", "beta").headers  # beta has no quota at all

    # gamma: 3/hour per app, 5/hour for all apps together.
    r = get(gw, "app-b", "gamma")
    assert r.status_code == 200
    assert r.headers["RateLimit-Policy"] == '"gamma/app/hour";q=3;w=3600'
    assert ratelimit(r)[:2] == ("gamma/app/hour", 2)  # service quota has 4 left: the app's is tighter
    assert [get(gw, "app-b", "gamma").status_code for _ in range(2)] == [200, 200]
    assert_refused(get(gw, "app-b", "gamma"), "gamma/app/hour", 3, 3600)
    # app-c has its own per-app count, but only 2 of the service's 5 remain.
    r = get(gw, "app-c", "gamma")
    assert r.status_code == 200
    assert r.headers["RateLimit-Policy"] == '"gamma/hour";q=5;w=3600'
    assert ratelimit(r)[:2] == ("gamma/hour", 1)  # per app: 2 left; per service: 1 left
    assert get(gw, "app-c", "gamma").status_code == 200
    assert_refused(get(gw, "app-c", "gamma"), "gamma/hour", 5, 3600)
    assert len(fake.hits("/gamma/m1")) == 5


# -- 4. a window rolls over -------------------------------------------------------------------------

def test_a_per_second_window_rolls_over(tmp_path: Path, confdir: Path, fake: FakeProvider, redis_url: str,
                                        gateways: list[Gateway]) -> None:
    serve_all(fake, "alpha")
    rules = write_rules(tmp_path / "rules", {
        "alpha.yaml": service("alpha", fake, "[{limit: 2/s, per: service}]"),
        "apps.yaml": apps_file(),
    })
    gw = start(gateways, rules, confdir, redis=redis_url)
    session = requests.Session()
    session.proxies = gw.proxies("app-a", APPS["app-a"])
    assert session.get("http://api.alpha.test/m1", timeout=10).status_code == 200  # warm up the connection

    def three_in_one_second() -> tuple[list[requests.Response], int] | None:
        # Start right after a fresh second begins (no earlier call counted in it), and accept the try
        # only if all three calls fit in that second.
        previous = int(time.time())
        wait_until(lambda: int(time.time()) > previous and time.time() % 1 < 0.1, timeout=3, interval=0.002,
                   what="a second to begin")
        second = int(time.time())
        answers = [session.get("http://api.alpha.test/m1", timeout=10) for _ in range(3)]
        return (answers, second) if int(time.time()) == second else None

    answers, second = wait_until(three_in_one_second, timeout=10, interval=0, what="three calls in one second")  # type: ignore[misc]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert ratelimit(answers[1])[:2] == ("alpha/second", 0)
    assert_refused(answers[2], "alpha/second", 2, 1)
    assert answers[2].headers["Retry-After"] == "1"

    wait_until(lambda: int(time.time()) > second, timeout=3, interval=0.01, what="the next second")
    again = session.get("http://api.alpha.test/m1", timeout=10)
    assert again.status_code == 200, again.text
    session.close()


# -- 5. Redis goes away in the middle of a run, and comes back --------------------------------------

def admin(gw: Gateway, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{gw.admin}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric(gw: Gateway, name: str) -> float:
    """The sum of a metric's samples on the admin listener's /metrics."""
    status, text = admin(gw, "/metrics")
    assert status == 200
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith((name + " ", name + "{")))


def state_status(gw: Gateway) -> dict[str, object]:
    status, text = admin(gw, "/status")
    assert status == 200
    return json.loads(text)["state"]  # type: ignore[no-any-return]


def outage_lines(gw: Gateway) -> list[str]:
    return [line for line in gw.output().splitlines() if "unreachable" in line.lower()]


def timed(gw: Gateway, app: str, svc: str) -> tuple[requests.Response, float]:
    began = time.perf_counter()
    r = get(gw, app, svc)
    return r, time.perf_counter() - began


def test_redis_outage_open_then_closed_then_back(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                                 redis_url: str, redis_server: RedisServer,
                                                 gateways: list[Gateway]) -> None:
    if redis_server.url != redis_url:
        pytest.skip("needs the tests' own redis-server (REDIS_URL points elsewhere)")
    serve_all(fake, "alpha", "beta")
    rules = write_rules(tmp_path / "rules", {
        "alpha.yaml": service("alpha", fake, "[{limit: 10/hour, per: service}]"),
        "beta.yaml": service("beta", fake),
        "apps.yaml": apps_file("{state_failure: open, instances: 2}"),
    })
    a = start(gateways, rules, confdir, redis=redis_url)
    b = start(gateways, rules, confdir, redis=redis_url)
    clear_of_window_edge(3600, 40)

    # Redis up: exact, shared, not degraded.
    for gw, remaining in ((a, 9), (b, 8)):
        r = get(gw, "app-a", "alpha")
        assert r.status_code == 200 and "X-Gateway-Degraded" not in r.headers
        assert ratelimit(r)[1] == remaining
        assert metric(gw, "gateway_state_errors_total") == 0

    redis_server.stop()
    try:
        # state_failure: open. Each of the two instances counts alone, so each admits 10 / 2 = 5.
        for gw in (a, b):
            answers = [timed(gw, "app-a", "alpha") for _ in range(7)]
            assert max(seconds for _, seconds in answers) < 1.0, [s for _, s in answers]
            assert [r.status_code for r, _ in answers] == [200] * 5 + [429] * 2
            assert all(r.headers.get("X-Gateway-Degraded") == "state" for r, _ in answers)
            for r, _ in answers[5:]:
                assert_refused(r, "alpha/hour", 10, 3600)  # names the configured quota, not the share
            # A service without quotas does not need the store: it is served as usual.
            assert get(gw, "app-b", "beta").status_code == 200
            # The outage is logged once per instance, not per call, and every call it touched counts.
            assert len(outage_lines(gw)) == 1, outage_lines(gw)
            assert metric(gw, "gateway_state_errors_total") == 7
            state = state_status(gw)
            assert state["available"] is False and state["degraded"] is True and state["instances"] == 2
            # Degraded, not unready: a fleet must not drop out all at once.
            assert admin(gw, "/readyz")[0] == 200

        # state_failure: closed, by a hot reload. Calls that need a quota fail -3002 at once.
        (rules / "apps.yaml").write_text(apps_file("{state_failure: closed, instances: 2}"))
        for gw in (a, b):
            wait_until(lambda gw=gw: state_status(gw)["policy"] == "closed", timeout=10,
                       what=f"gateway {gw.port} to reload state_failure: closed")
            for _ in range(3):
                r, seconds = timed(gw, "app-a", "alpha")
                assert r.status_code == 500, r.text
                assert r.json()["code"] == -3002 and r.json()["source"] == "gateway"
                assert r.headers["X-Gateway-Code"] == "-3002"
                assert seconds < 1.0
            assert get(gw, "app-b", "beta").status_code == 200
            assert len(outage_lines(gw)) == 1, outage_lines(gw)
    finally:
        redis_server.start()

    # Back: the first probe that reaches Redis resumes exact shared counting on every instance. The
    # restarted Redis lost its counters (no persistence), so they start again from zero.
    def resumed(gw: Gateway) -> bool:
        r = get(gw, "app-c", "alpha")
        return r.status_code == 200 and "X-Gateway-Degraded" not in r.headers

    for gw in (a, b):
        wait_until(lambda gw=gw: resumed(gw), timeout=10, interval=0.2, what=f"gateway {gw.port} back on Redis")
        assert state_status(gw)["available"] is True
    # Strictly shared again: alternate the instances and watch one counter go down.
    before = ratelimit(get(a, "app-b", "alpha"))[1]
    after = [ratelimit(get(gw, "app-b", "alpha"))[1] for gw in (b, a, b)]
    assert after == [before - 1, before - 2, before - 3]
    for gw in (a, b):
        back = [line for line in gw.output().splitlines() if "reachable again" in line.lower()]
        assert len(back) == 1, back


# -- 6. signed requests: the nonce is shared by the fleet ------------------------------------------

def reference_signature(secret: str, method: str, path_and_query: str, timestamp: str, nonce: str,
                        body: bytes) -> str:
    """SPEC 7, written out independently of addons.identity."""
    text = "\n".join([method, path_and_query, timestamp, nonce, hashlib.sha256(body).hexdigest()])
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def signed_post(gw: Gateway, app: str, path_and_query: str, body: bytes, *, nonce: str,
                timestamp: int | None = None, signature: str | None = None) -> requests.Response:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    if signature is None:
        signature = sign(APPS[app], "POST", path_and_query, ts, nonce, body)
        assert signature == reference_signature(APPS[app], "POST", path_and_query, ts, nonce, body)
    headers = {"X-Gateway-App": app, "X-Gateway-Timestamp": ts, "X-Gateway-Nonce": nonce,
               "X-Gateway-Signature": signature, "Content-Type": "application/json"}
    # No Proxy-Authorization: the signature alone identifies the caller.
    return requests.post(f"http://api.alpha.test{path_and_query}", data=body, headers=headers,
                         proxies=gw.proxies(), timeout=10)


def assert_signature_refused(r: requests.Response, words: str) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["code"] == -2002 and r.json()["source"] == "caller"
    assert words in r.json()["message"], r.json()["message"]


def test_signed_requests_and_nonces_shared_by_two_instances(tmp_path: Path, confdir: Path, fake: FakeProvider,
                                                            redis_url: str, gateways: list[Gateway]) -> None:
    serve_all(fake, "alpha")
    rules = write_rules(tmp_path / "rules", {
        "alpha.yaml": service("alpha", fake),
        "apps.yaml": apps_file("{require_app: true}"),
    })
    a = start(gateways, rules, confdir, redis=redis_url)
    b = start(gateways, rules, confdir, redis=redis_url)
    body = b'{"to": "someone", "text": "hello"}'
    path = "/m1?lang=zh_CN&x=1"

    first = signed_post(a, "app-a", path, body, nonce="nonce-0001-abcdef")
    assert first.status_code == 200, first.text
    seen = fake.hits("/alpha/m1")[-1]
    assert seen.body == body and seen.query == {"lang": "zh_CN", "x": "1"}
    assert not any(h.startswith("x-gateway-") for h in seen.headers)  # identity headers stay here
    assert b.log_lines() == [] and a.log_for(first.json()["request_id"])["app"] == "app-a"

    # The same nonce, replayed to the other instance, and to the first one again.
    assert_signature_refused(signed_post(b, "app-a", path, body, nonce="nonce-0001-abcdef"), "replayed")
    assert_signature_refused(signed_post(a, "app-a", path, body, nonce="nonce-0001-abcdef"), "replayed")
    # A nonce is per app: another app may use the same string.
    assert signed_post(b, "app-b", path, body, nonce="nonce-0001-abcdef").status_code == 200

    now = int(time.time())
    assert_signature_refused(signed_post(a, "app-a", path, body, nonce="nonce-old-000001", timestamp=now - 330),
                             "expired")
    assert_signature_refused(signed_post(b, "app-a", path, body, nonce="nonce-future-0001", timestamp=now + 330),
                             "expired")
    assert signed_post(b, "app-a", path, body, nonce="nonce-recent-0001", timestamp=now - 240).status_code == 200

    ts = str(int(time.time()))
    good = sign(APPS["app-a"], "POST", path, ts, "nonce-bad-sig-001", body)
    flipped = ("0" if good[0] != "0" else "1") + good[1:]
    assert_signature_refused(signed_post(a, "app-a", path, body, nonce="nonce-bad-sig-001", timestamp=int(ts),
                                         signature=flipped), "invalid")
    # Signed for another body, path or secret: refused.
    other_body = sign(APPS["app-a"], "POST", path, ts, "nonce-bad-sig-002", b"{}")
    assert_signature_refused(signed_post(a, "app-a", path, body, nonce="nonce-bad-sig-002", timestamp=int(ts),
                                         signature=other_body), "invalid")
    other_path = sign(APPS["app-a"], "POST", "/m1?lang=en&x=1", ts, "nonce-bad-sig-003", body)
    assert_signature_refused(signed_post(a, "app-a", path, body, nonce="nonce-bad-sig-003", timestamp=int(ts),
                                         signature=other_path), "invalid")
    wrong_secret = reference_signature(APPS["app-b"], "POST", path, ts, "nonce-bad-sig-004", body)
    assert_signature_refused(signed_post(a, "app-a", path, body, nonce="nonce-bad-sig-004", timestamp=int(ts),
                                         signature=wrong_secret), "invalid")
    # A refused signature does not burn its nonce: the rightful request with it still goes through,
    # on either instance (garbage cannot fill the nonce store or lock callers out).
    assert signed_post(b, "app-a", path, body, nonce="nonce-bad-sig-001").status_code == 200
    # Nonces of 8 to 64 characters only.
    assert_signature_refused(signed_post(a, "app-a", path, body, nonce="short"), "Nonce")
    # Unsigned, unauthenticated: 407 with the challenge.
    r = requests.post("http://api.alpha.test/m1", data=body, proxies=a.proxies(), timeout=10)
    assert r.status_code == 407 and r.json()["code"] == -2001
    assert r.headers["Proxy-Authenticate"] == 'Basic realm="gateway"'
    assert len(fake.hits("/alpha/m1")) == 4
