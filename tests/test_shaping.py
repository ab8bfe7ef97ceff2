"""The pure parts of shaping (SPEC 14): the fair queue, the provider-quota parser and learner, the schema."""

from __future__ import annotations

from email.utils import formatdate
from pathlib import Path

from multidict import CIMultiDict

from addons.rules.loader import load_sources
from addons.shaping.fair import FairQueue
from addons.shaping.fleet import parse_message
from addons.shaping.provider import (
    MAX_BLOCK,
    ProviderQuotas,
    observe,
    parse_ratelimit,
    parse_reset,
    wechat_reset,
)

NOW = 1_764_000_000.0  # a fixed wall time


def drain(queue: FairQueue[str]) -> list[str]:
    out = []
    while queue:
        item = queue.pop()
        assert item is not None
        out.append(item)
    return out


def test_round_robin_across_apps_oldest_first_within_one() -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(4):
        queue.push("a", f"a{i}")
    queue.push("b", "b0")
    queue.push("c", "c0")
    queue.push("b", "b1")
    assert queue.head() == "a0" and len(queue) == 7
    assert drain(queue) == ["a0", "b0", "c0", "a1", "b1", "a2", "a3"]
    assert queue.pop() is None and queue.head() is None


def test_a_waiter_can_leave_from_the_middle() -> None:
    queue: FairQueue[str] = FairQueue()
    for item in ("a0", "a1", "a2"):
        queue.push("a", item)
    queue.push("b", "b0")
    assert queue.remove("a", "a1") and not queue.remove("a", "a1") and not queue.remove("x", "a0")
    assert queue.remove("b", "b0")
    assert drain(queue) == ["a0", "a2"]


def test_reset_as_seconds_unix_time_or_http_date() -> None:
    assert parse_reset("30", NOW) == NOW + 30
    assert parse_reset("1.5", NOW) == NOW + 1.5
    assert parse_reset(str(int(NOW) + 90), NOW) == int(NOW) + 90
    assert parse_reset(formatdate(NOW + 120, usegmt=True), NOW) == NOW + 120
    for bad in (None, "", "soon", "-5", "nan", "inf"):
        assert parse_reset(bad, NOW) is None


def test_ietf_ratelimit_fields_are_read_without_configuration() -> None:
    assert parse_ratelimit('"default";r=0;t=30') == (0, 30.0)
    assert parse_ratelimit('"day";r=500;t=3600, "minute";r=3;t=20') == (3, 20.0)
    assert parse_ratelimit("garbage, ;;;") is None
    seen = observe(200, CIMultiDict({"RateLimit": '"m";r=0;t=7', "RateLimit-Policy": '"m";q=60;w=60'}), NOW)
    assert seen is not None
    assert (seen.remaining, seen.limit, seen.blocked_until) == (0, 60, NOW + 7)
    assert observe(200, CIMultiDict({"Content-Type": "application/json"}), NOW) is None


def test_configured_headers_and_remaining_above_zero() -> None:
    headers = CIMultiDict({"X-RateLimit-Remaining": "12", "X-RateLimit-Reset": "40"})
    seen = observe(200, headers, NOW, remaining_header="X-RateLimit-Remaining", reset_header="X-RateLimit-Reset")
    assert seen is not None and (seen.remaining, seen.reset_at, seen.blocked_until) == (12, NOW + 40, None)
    spent = observe(200, CIMultiDict({"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 5)}), NOW,
                    remaining_header="X-RateLimit-Remaining", reset_header="X-RateLimit-Reset")
    assert spent is not None and spent.blocked_until == int(NOW) + 5
    # Not configured: those headers mean nothing.
    assert observe(200, headers, NOW) is None


def test_429_retry_after_and_wechat_codes_block_the_same_way() -> None:
    seen = observe(429, CIMultiDict({"Retry-After": "3"}), NOW)
    assert seen is not None and seen.blocked_until == NOW + 3
    dated = observe(429, CIMultiDict({"Retry-After": formatdate(NOW + 8, usegmt=True)}), NOW)
    assert dated is not None and dated.blocked_until == NOW + 8
    # A 429 that names no reset stops nothing; a spent RateLimit field on it still does.
    assert observe(429, CIMultiDict(), NOW) is None
    spent = observe(429, CIMultiDict({"RateLimit": '"m";r=0;t=4'}), NOW)
    assert spent is not None and spent.blocked_until == NOW + 4
    minute = observe(200, CIMultiDict(), NOW, provider_code="45011", wechat=True)
    assert minute is not None and minute.blocked_until == (NOW // 60 + 1) * 60
    day = wechat_reset("45009", NOW)
    assert day is not None and (day + 8 * 3600) % 86400 == 0 and 0 < day - NOW <= 86400
    assert observe(200, CIMultiDict(), NOW, provider_code="45011", wechat=False) is None
    far = observe(429, CIMultiDict({"Retry-After": "99999999"}), NOW)
    assert far is not None and far.blocked_until == NOW + MAX_BLOCK


def test_the_learner_forgets_a_spent_quota_after_its_reset() -> None:
    learned = ProviderQuotas()
    seen = observe(200, CIMultiDict({"RateLimit": '"m";r=0;t=2'}), NOW)
    assert seen is not None
    learned.learn("sms", seen, NOW)
    assert learned.blocked_until("sms", NOW + 1) == NOW + 2
    assert learned.status(NOW + 1)["sms"]["blocked"] is True
    assert learned.blocked_until("sms", NOW + 2.5) is None and learned.remaining("sms", NOW + 2.5) is None
    learned.block("wx", NOW + 10, NOW)
    assert learned.blocked_until("wx", NOW) == NOW + 10
    learned.retain({"sms"})
    assert learned.blocked_until("wx", NOW) is None


def test_schema_of_queue_queue_max_and_provider_quota(tmp_path: Path) -> None:
    rules, problems = load_sources([
        ("s.yaml", "service: s\nupstream: {url: 'http://s.test'}\n"
                   "quota: [{limit: 10/s, per: service, queue: 2s}]\n"
                   "provider_quota: {remaining: X-RateLimit-Remaining, reset: X-RateLimit-Reset}\n"),
        ("apps.yaml", "apps: {a: {secret: x, quota: [{limit: 5/s, queue: 500ms}]}}\ngateway: {queue_max: 10}\n"),
    ], tmp_path, env={})
    assert problems == []
    assert rules.services["s"].quota[0].queue == 2.0
    assert rules.services["s"].provider_quota is not None
    assert rules.apps["a"].quota[0].queue == 0.5
    assert rules.gateway.queue_max == 10
    _, problems = load_sources([
        ("s.yaml", "service: s\nupstream: {url: 'http://s.test'}\nquota: [{limit: 10/s, queue: 5m}]\n"
                   "provider_quota: {remaining: 'bad header'}\n"),
        ("apps.yaml", "apps: {}\ngateway: {queue_max: -1}\n"),
    ], tmp_path, env={})
    text = "\n".join(str(p) for p in problems)
    assert "queue" in text and "header name" in text and "queue_max" in text, text


def test_fleet_messages_are_parsed_strictly() -> None:
    assert parse_message(b"sms 1764000002.5") == ("sms", 1764000002.5)
    assert parse_message("wx 1764000000") == ("wx", 1764000000.0)
    for bad in (b"", b"sms", b"sms soon", b" 1764000000", b"sms nan", b"sms inf", b"x " + b"1" * 300):
        assert parse_message(bad) is None
