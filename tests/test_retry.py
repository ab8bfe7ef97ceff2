"""The retry policy (SPEC 3 `retry`, SPEC 9): which attempts are retried, waits, the deadline."""

from __future__ import annotations

import random
from email.utils import formatdate
from typing import Any

import pytest

from addons.rules.schema import RetrySpec
from addons.upstream.retry import Deadline, Outcome, RetryPolicy, parse_retry_after

WECHAT_RETRY: dict[str, Any] = {
    "attempts": 3,
    "backoff": "200ms",
    "max_backoff": "2s",
    "deadline": "10s",
    "on": ["timeout", "connect", 502, 503, 504, -1003],
    "methods": ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"],
}


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def policy(timeout: float = 5.0, rng: random.Random | None = None, **overrides: Any) -> RetryPolicy:
    return RetryPolicy.from_spec(RetrySpec.model_validate({**WECHAT_RETRY, **overrides}), timeout, rng=rng)


REFUSED = Outcome.connect_failed("connection refused")
CONNECT_TIMEOUT = Outcome.timed_out(sent=False)
READ_TIMEOUT = Outcome.timed_out(sent=True)


@pytest.mark.parametrize(
    ("outcome", "attempt", "method", "reason"),
    [
        # 503 on an idempotent method is retried; on POST it is not: the provider may have acted.
        (Outcome.answer(503), 1, "GET", "retry"),
        (Outcome.answer(503), 1, "POST", "method"),
        (Outcome.answer(502), 2, "PUT", "retry"),
        (Outcome.answer(504), 1, "DELETE", "retry"),
        (Outcome.answer(503), 1, "PATCH", "method"),
        # Nothing was sent: any method is retried.
        (REFUSED, 1, "POST", "retry"),
        (REFUSED, 2, "PATCH", "retry"),
        (CONNECT_TIMEOUT, 1, "POST", "retry"),
        # A timeout after the request went out is only retried for listed methods.
        (READ_TIMEOUT, 1, "GET", "retry"),
        (READ_TIMEOUT, 1, "POST", "method"),
        # WeChat's errcode -1 (HTTP 200) arrives as envelope code -1003: listed, so retried.
        (Outcome.answer(200, code=-1003), 1, "GET", "retry"),
        (Outcome.answer(200, code=-1003), 1, "POST", "method"),
        # Not listed in `on`.
        (Outcome.answer(200, code=-1005), 1, "GET", "not_listed"),
        (Outcome.answer(500), 1, "GET", "not_listed"),
        (Outcome.answer(400, code=-2005), 1, "GET", "not_listed"),
        (Outcome.answer(429, code=-1005), 1, "GET", "not_listed"),
        # Success is never retried.
        (Outcome.answer(200), 1, "GET", "ok"),
        (Outcome.answer(200, code=0), 1, "GET", "ok"),
        (Outcome.answer(302), 1, "GET", "ok"),
        # The attempts cap (3 in total, the first included).
        (Outcome.answer(503), 3, "GET", "attempts"),
        (REFUSED, 3, "POST", "attempts"),
        # Methods compare case-insensitively.
        (Outcome.answer(503), 1, "get", "retry"),
    ],
)
def test_policy_table(outcome: Outcome, attempt: int, method: str, reason: str) -> None:
    p = policy()
    assert p._reason(outcome, attempt, method) == reason
    assert p.should_retry(outcome, attempt, method) is (reason == "retry")
    decision = p.decide(outcome, attempt, method, p.start())
    assert decision.retry is (reason == "retry")
    assert decision.reason == reason


def test_envelope_codes_only_when_listed() -> None:
    busy = Outcome.answer(200, code=-1003)
    limited = Outcome.answer(200, code=-1005)
    plain = policy(on=["timeout", "connect", 503])
    assert not plain.should_retry(busy, 1, "GET")
    assert not plain.is_failure(busy)
    both = policy(on=[-1003, -1005])
    assert both.should_retry(busy, 1, "GET")
    assert both.should_retry(limited, 1, "GET")
    # A 503 maps to -1003 (SPEC 5), so listing the code also covers the status.
    assert both.should_retry(Outcome.answer(503, code=-1003), 1, "GET")
    assert not both.should_retry(REFUSED, 1, "POST")  # `connect` not listed


def test_connect_timeout_matches_timeout_or_connect() -> None:
    assert policy(on=["connect"]).should_retry(CONNECT_TIMEOUT, 1, "POST")
    assert policy(on=["timeout"]).should_retry(CONNECT_TIMEOUT, 1, "POST")
    assert not policy(on=["connect"]).should_retry(READ_TIMEOUT, 1, "GET")
    assert not policy(on=[503]).should_retry(CONNECT_TIMEOUT, 1, "GET")


def test_outcome_kinds() -> None:
    assert Outcome.answer(200).kind == "ok"
    assert Outcome.answer(200, code=-1003).kind == "code"
    assert Outcome.answer(503, code=-1003).kind == "status"
    assert Outcome.answer(404).kind == "status"
    assert REFUSED.kind == "connect" and not REFUSED.sent
    assert READ_TIMEOUT.sent and not CONNECT_TIMEOUT.sent


def test_no_retry_block_is_one_attempt() -> None:
    p = RetryPolicy.from_spec(None, 3.0)
    assert p.attempts == 1
    assert p.deadline == 3.0
    assert not p.should_retry(Outcome.answer(503), 1, "GET")
    assert not p.should_retry(REFUSED, 1, "GET")
    # Failure still means the schema's default `on`, for health marking.
    assert p.is_failure(Outcome.answer(503))
    assert p.is_failure(REFUSED)
    assert not p.is_failure(Outcome.answer(500))
    assert not p.is_failure(Outcome.answer(200, code=-1003))


def test_attempts_cap_counts_the_first() -> None:
    p = policy(attempts=4)
    retried = [p.should_retry(Outcome.answer(503), n, "GET") for n in range(1, 6)]
    assert retried == [True, True, True, False, False]
    one = policy(attempts=1)
    assert not one.should_retry(REFUSED, 1, "GET")


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 8])
def test_full_jitter_within_bounds(attempt: int) -> None:
    p = policy(backoff="100ms", max_backoff="1s", rng=random.Random(7))
    cap = min(1.0, 0.1 * 2 ** (attempt - 1))
    assert p.backoff_cap(attempt) == pytest.approx(cap)
    waits = [p.delay(attempt) for _ in range(2000)]
    assert all(0.0 <= w <= cap for w in waits)
    # Full jitter spreads over the whole range, not a fixed step.
    assert min(waits) < cap * 0.1
    assert max(waits) > cap * 0.9


def test_backoff_cap_does_not_overflow() -> None:
    p = policy(attempts=10, backoff="1s", max_backoff="2s")
    assert p.backoff_cap(10_000) == 2.0
    assert p.backoff_cap(0) == 0.0


def test_retry_after_honoured_up_to_max_backoff() -> None:
    p = policy(backoff="100ms", max_backoff="2s", rng=random.Random(1))
    assert p.delay(1, "1") == 1.0
    assert p.delay(1, "2") == 2.0
    assert p.delay(1, "0") == 0.0
    # Longer than max_backoff: ignored, the jittered backoff applies.
    for _ in range(200):
        assert 0.0 <= p.delay(1, "30") <= 0.1
    # Unreadable: ignored.
    assert 0.0 <= p.delay(1, "soon") <= 0.1
    assert 0.0 <= p.delay(1, "-1") <= 0.1


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    soon = formatdate(now + 1, usegmt=True)
    later = formatdate(now + 60, usegmt=True)
    past = formatdate(now - 60, usegmt=True)
    assert parse_retry_after(soon, now) == pytest.approx(1.0)
    assert parse_retry_after(past, now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("  ") is None
    assert parse_retry_after("Wed, 99 Foo 2024 99:99:99 GMT") is None
    p = policy(backoff="100ms", max_backoff="2s", rng=random.Random(3))
    assert p.delay(1, soon, now=now) == pytest.approx(1.0)
    assert p.delay(1, later, now=now) <= 0.1


def test_retry_after_used_by_decide() -> None:
    p = policy(backoff="100ms", max_backoff="2s")
    decision = p.decide(Outcome.answer(503, retry_after="1"), 1, "GET", p.start())
    assert decision.retry and decision.wait == 1.0


def test_default_deadline_covers_every_attempt_and_wait() -> None:
    # 3 attempts of 5 s, and each of the 2 waits may reach max_backoff (a Retry-After up to it is honoured).
    p = policy(deadline=None)
    assert p.deadline == pytest.approx(3 * 5.0 + 2 * 2.0)
    explicit = policy()
    assert explicit.deadline == 10.0


def test_attempt_timeout_never_passes_the_deadline() -> None:
    p = policy(timeout=5.0)
    assert p.attempt_timeout(10.0) == 5.0
    assert p.attempt_timeout(1.5) == 1.5
    assert p.attempt_timeout(0.0) == 0.0
    assert p.attempt_timeout(-1.0) == 0.0


def test_deadline_tracks_a_clock() -> None:
    clock = FakeClock()
    d = Deadline(10.0, clock)
    assert d.remaining() == 10.0 and not d.expired
    clock.now += 9.5
    assert d.remaining() == pytest.approx(0.5)
    assert d.allows_wait(0.4)
    assert not d.allows_wait(0.5)  # nothing left for an attempt after it
    clock.now += 1.0
    assert d.remaining() == 0.0 and d.expired


def test_wait_that_would_overrun_the_deadline_is_not_started() -> None:
    clock = FakeClock()
    p = policy(timeout=5.0, deadline="10s")
    deadline = p.start(clock)
    clock.now += 9.0  # one slow attempt and a bit: 1 s left
    overrun = p.decide(Outcome.answer(503, retry_after="2"), 1, "GET", deadline)
    assert not overrun.retry
    assert overrun.reason == "deadline"
    fits = p.decide(Outcome.answer(503, retry_after="0"), 1, "GET", deadline)
    assert fits.retry and fits.wait == 0.0
    assert p.attempt_timeout(deadline.remaining()) == pytest.approx(1.0)
    clock.now += 1.0
    gone = p.decide(REFUSED, 1, "POST", deadline)
    assert not gone.retry and gone.reason == "deadline"


def test_jittered_wait_checked_against_the_deadline() -> None:
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b  # the worst case the jitter can draw

    clock = FakeClock()
    p = policy(backoff="1s", max_backoff="2s", deadline="10s", rng=Top())
    deadline = p.start(clock)
    clock.now += 8.5  # 1.5 s left
    assert p.decide(Outcome.answer(503), 1, "GET", deadline).retry  # waits 1 s
    second = p.decide(Outcome.answer(503), 2, "GET", deadline)  # would wait 2 s
    assert not second.retry and second.reason == "deadline" and second.wait == 2.0
