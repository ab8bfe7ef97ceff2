"""The retry policy of one rule (SPEC 3 `retry`, SPEC 9): pure decisions, no I/O.

The forwarder makes the upstream calls itself (one shared aiohttp session) and asks this module,
after each attempt, whether to try again and how long to wait first:

    policy = RetryPolicy.from_spec(service.retry, timeout)      # once per rule, at rules load
    deadline = policy.start()                                   # once per call
    attempt = 1
    while True:
        outcome = await send(timeout=policy.attempt_timeout(deadline.remaining()))
        decision = policy.decide(outcome, attempt, method, deadline)
        if not decision.retry:
            break
        await asyncio.sleep(decision.wait)
        attempt += 1

`Outcome.kind` names what happened; the envelope code the caller finally gets (-1001 for a
timeout, -1003 for a refused connect, ...) is decided elsewhere, from the last outcome.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Literal

from addons.upstream.schema import RetrySpec

OutcomeKind = Literal["connect", "timeout", "status", "code", "ok"]

# What counts as a failed attempt when a rule has no `retry` block: the schema's own default `on`,
# so health marking behaves the same whether or not retries are configured.
DEFAULT_ON: tuple[str | int, ...] = tuple(RetrySpec().on)
DEFAULT_METHODS: frozenset[str] = frozenset(RetrySpec().methods)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to.

    kind:   "connect" - no connection (refused, DNS, TLS handshake, reset before the request went out);
            "timeout" - the attempt's timeout expired (while connecting when `sent` is False);
            "status"  - the provider answered with a non-2xx/3xx HTTP status;
            "code"    - the provider answered 2xx/3xx but its body carries an error code (WeChat's
                        errcode -1 is -1003);
            "ok"      - anything else: a usable answer.
    sent:   False when the attempt failed before the request was written; then the provider cannot
            have acted on it, so any method may be retried.
    status: HTTP status of the answer, if there was one.
    code:   the gateway code the envelope adapter gave the answer (0 or None when it is a success).
    retry_after: the provider's Retry-After header, verbatim.
    detail: free text for the log (never shown to the caller).
    """

    kind: OutcomeKind
    sent: bool = True
    status: int | None = None
    code: int | None = None
    retry_after: str | None = None
    detail: str = ""

    @classmethod
    def connect_failed(cls, detail: str = "") -> Outcome:
        return cls("connect", sent=False, detail=detail)

    @classmethod
    def timed_out(cls, *, sent: bool = True, detail: str = "") -> Outcome:
        return cls("timeout", sent=sent, detail=detail)

    @classmethod
    def answer(cls, status: int, code: int | None = None, retry_after: str | None = None,
               detail: str = "") -> Outcome:
        """An HTTP answer; `code` is the adapter's verdict on the body. The kind follows from both:
        an HTTP error status wins over a body code, a 2xx/3xx with a non-zero code is "code"."""
        if status >= 400:
            kind: OutcomeKind = "status"
        elif code:
            kind = "code"
        else:
            kind = "ok"
        return cls(kind, sent=True, status=status, code=code, retry_after=retry_after, detail=detail)


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer after an attempt. `reason` is for logs and metrics:
    "ok" (not a failure), "not_listed" (failure not in `on`), "method" (request was sent and its
    method is not retryable), "attempts" (no attempts left), "deadline" (the wait would overrun the
    deadline, or the deadline has passed), "retry"."""

    retry: bool
    wait: float = 0.0
    reason: str = "retry"


class Deadline:
    """The whole call's time budget: every attempt and every wait come out of it."""

    __slots__ = ("_clock", "at", "seconds")

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.seconds = seconds
        self.at = clock() + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - self._clock())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def allows_wait(self, wait: float) -> bool:
        """A wait is only started if an attempt can still follow it: one that would use up the rest of
        the deadline could only end in a timeout, so the call fails at once instead (SPEC 9)."""
        return wait < self.remaining()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or HTTP-date, RFC 9110 10.2.3);
    None when absent or unreadable. A date in the past means 0."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means the zone was "-0000"
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class RetryPolicy:
    """One rule's retry policy; immutable, shared by every call of the rule."""

    __slots__ = ("_rng", "attempts", "backoff", "deadline", "max_backoff", "methods", "on_codes",
                 "on_connect", "on_statuses", "on_timeout", "timeout")

    def __init__(self, *, attempts: int, timeout: float, backoff: float, max_backoff: float,
                 deadline: float | None, on: tuple[str | int, ...] | list[str | int],
                 methods: frozenset[str] | set[str] | list[str], rng: random.Random | None = None) -> None:
        self.attempts = attempts
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.on_timeout = "timeout" in on
        self.on_connect = "connect" in on
        # HTTP statuses are positive, envelope codes negative (-1xxx): the schema keeps them apart.
        self.on_statuses = frozenset(x for x in on if isinstance(x, int) and x > 0)
        self.on_codes = frozenset(x for x in on if isinstance(x, int) and x < 0)
        self.methods = frozenset(m.upper() for m in methods)
        self._rng = rng or random.Random()
        self.deadline = self.default_deadline() if deadline is None else deadline

    @classmethod
    def from_spec(cls, spec: RetrySpec | None, timeout: float,
                  rng: random.Random | None = None) -> RetryPolicy:
        """`timeout` is the effective per-attempt timeout of the rule (method's, else upstream's).
        Without a `retry` block a call is one attempt whose deadline is that timeout; `on` keeps the
        schema's default so `is_failure` (health marking) still means the same thing."""
        if spec is None:
            return cls(attempts=1, timeout=timeout, backoff=0.0, max_backoff=0.0, deadline=timeout,
                       on=DEFAULT_ON, methods=DEFAULT_METHODS, rng=rng)
        return cls(attempts=spec.attempts, timeout=timeout, backoff=spec.backoff,
                   max_backoff=spec.max_backoff, deadline=spec.deadline, on=tuple(spec.on),
                   methods=frozenset(spec.methods), rng=rng)

    # -- time --------------------------------------------------------------------------------------

    def backoff_cap(self, attempt: int) -> float:
        """Upper bound of the jittered wait after failed attempt number `attempt` (1-based)."""
        if attempt < 1 or self.backoff <= 0:
            return 0.0
        # 2**n overflows a float for big n; past max_backoff the exponent no longer matters anyway.
        exponent = min(attempt - 1, 64)
        return min(self.max_backoff, self.backoff * math.ldexp(1.0, exponent))

    def default_deadline(self) -> float:
        """Room for every attempt at full timeout plus the longest wait before each retry. A wait can
        reach max_backoff whatever the exponent, because a provider's Retry-After up to max_backoff is
        honoured, so each retry is budgeted max(backoff cap, max_backoff) = max_backoff."""
        waits = sum(max(self.backoff_cap(n), self.max_backoff) for n in range(1, self.attempts))
        return self.attempts * self.timeout + waits

    def start(self, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return Deadline(self.deadline, clock)

    def attempt_timeout(self, remaining: float) -> float:
        """The timeout of the next attempt: its own, but never past the call's deadline."""
        return max(0.0, min(self.timeout, remaining))

    def delay(self, attempt: int, retry_after: str | None = None, now: float | None = None) -> float:
        """Wait before the retry that follows failed attempt `attempt`: full jitter (AWS architecture
        blog, "Exponential Backoff and Jitter"), so a fleet of gateways does not retry in lockstep.
        A provider's Retry-After is used as given when it fits under max_backoff; a longer one is
        ignored (the deadline could not afford it, and the next attempt may reach the backup)."""
        asked = parse_retry_after(retry_after, now)
        if asked is not None and asked <= self.max_backoff:
            return asked
        return self._rng.uniform(0.0, self.backoff_cap(attempt))

    # -- decisions ---------------------------------------------------------------------------------

    def is_failure(self, outcome: Outcome) -> bool:
        """Whether the attempt failed in the sense of `retry.on` (SPEC 9 "a failed attempt"): the
        same test decides retries and passive health marking."""
        if outcome.kind == "connect":
            return self.on_connect
        if outcome.kind == "timeout":
            # A connect timeout is both a timeout and a connect failure; either entry covers it.
            return self.on_timeout or (not outcome.sent and self.on_connect)
        if outcome.kind == "ok":
            return False
        if outcome.status is not None and outcome.status in self.on_statuses:
            return True
        return outcome.code is not None and outcome.code in self.on_codes

    def should_retry(self, outcome: Outcome, attempt: int, method: str) -> bool:
        """Retry after attempt number `attempt` (1-based)? Ignores time; see `decide`."""
        return self._reason(outcome, attempt, method) == "retry"

    def decide(self, outcome: Outcome, attempt: int, method: str, deadline: Deadline,
               now: float | None = None) -> Decision:
        """`should_retry`, then the wait, then whether the deadline can afford it."""
        reason = self._reason(outcome, attempt, method)
        if reason != "retry":
            return Decision(False, reason=reason)
        wait = self.delay(attempt, outcome.retry_after, now)
        if not deadline.allows_wait(wait):
            return Decision(False, wait=wait, reason="deadline")
        return Decision(True, wait=wait)

    def _reason(self, outcome: Outcome, attempt: int, method: str) -> str:
        if outcome.kind == "ok":
            return "ok"
        if not self.is_failure(outcome):
            return "not_listed"
        # Nothing reached the provider, so it cannot have acted: safe for POST and PATCH too.
        if outcome.sent and method.upper() not in self.methods:
            return "method"
        if attempt >= self.attempts:
            return "attempts"
        return "retry"

    def __repr__(self) -> str:
        return (f"RetryPolicy(attempts={self.attempts}, timeout={self.timeout}, backoff={self.backoff}, "
                f"max_backoff={self.max_backoff}, deadline={self.deadline})")
