"""The provider's own quota, read from its answers: how many calls it still allows and when that
resets. Every way a provider says "spent" ends in the same fact, `blocked until T`:

- the configured `remaining` / `reset` headers (`provider_quota:`) at 0;
- the IETF fields `RateLimit: "name";r=0;t=30` (and `RateLimit-Policy` for the limit), read always;
- a 429 with `Retry-After` (seconds or an HTTP date);
- WeChat's errcode 45011 (per-minute quota: until the next minute) and 45009 (daily quota: until
  the next midnight in China, where WeChat counts its days).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

# A reset further away than this is taken as a day: no provider answer stops a service for longer.
MAX_BLOCK = 86400.0
# "Remaining 0" without any reset: stop for this long, then let one call find out.
DEFAULT_BLOCK = 1.0
# A reset number at or above this is a unix time, below it a number of seconds (RFC 9110 style).
_UNIX_TIME_FROM = 1_000_000_000
_CHINA_OFFSET = 8 * 3600

_ITEM = re.compile(r'^\s*(?:"[^"]*"|[A-Za-z*][A-Za-z0-9_.*:/%-]*)?\s*((?:;\s*[a-z][a-z0-9_.*-]*=[^;,]*)*)\s*$')


def parse_reset(value: str | None, now: float) -> float | None:
    """The unix time a reset header names: delta seconds, a unix time, or an HTTP date."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    if not math.isfinite(number) or number < 0:
        return None
    return number if number >= _UNIX_TIME_FROM else now + number


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value.strip().strip('"'))
    except ValueError:
        return None
    return number if number >= 0 else None


def _params(item: str) -> dict[str, str]:
    match = _ITEM.match(item)
    if match is None:
        return {}
    out: dict[str, str] = {}
    for part in match.group(1).split(";"):
        name, sep, val = part.partition("=")
        if sep:
            out[name.strip()] = val.strip()
    return out


def parse_ratelimit(field: str | None) -> tuple[int, float | None] | None:
    """The tightest item of an IETF `RateLimit` field: (remaining, seconds to reset or None)."""
    if not field:
        return None
    best: tuple[int, float | None] | None = None
    for item in field.split(",")[:16]:  # a structured list; more items than this is not a real policy
        params = _params(item)
        remaining = _int(params.get("r"))
        if remaining is None:
            continue
        reset = _int(params.get("t"))
        if best is None or remaining < best[0]:
            best = (remaining, float(reset) if reset is not None else None)
    return best


def parse_policy_limit(field: str | None) -> int | None:
    """The smallest quota `q` an IETF `RateLimit-Policy` field names."""
    if not field:
        return None
    limits = [q for item in field.split(",")[:16] if (q := _int(_params(item).get("q"))) is not None]
    return min(limits) if limits else None


def wechat_reset(errcode: str | None, now: float) -> float | None:
    """When a WeChat quota error ends: 45011 at the next minute, 45009 at China's next midnight."""
    if errcode == "45011":
        return (now // 60 + 1) * 60
    if errcode == "45009":
        return ((now + _CHINA_OFFSET) // 86400 + 1) * 86400 - _CHINA_OFFSET
    return None


@dataclass(frozen=True)
class Observation:
    """What one answer said about the provider's quota (any part may be unknown)."""

    remaining: int | None = None
    limit: int | None = None
    reset_at: float | None = None
    blocked_until: float | None = None  # set when the answer says the quota is spent


def observe(status: int | None, headers: Mapping[str, str], now: float, *, remaining_header: str | None = None,
            reset_header: str | None = None, provider_code: str | None = None,
            wechat: bool = False) -> Observation | None:
    """Read one provider answer; None when it says nothing about a quota (the usual case)."""
    remaining: int | None = None
    reset_at: float | None = None
    limit: int | None = None
    if remaining_header is not None:
        remaining = _int(headers.get(remaining_header))
    if reset_header is not None:
        reset_at = parse_reset(headers.get(reset_header), now)
    ietf = parse_ratelimit(headers.get("ratelimit"))
    if ietf is not None:
        if remaining is None or ietf[0] < remaining:
            remaining = ietf[0]
            if ietf[1] is not None:
                reset_at = now + ietf[1]
        elif reset_at is None and ietf[1] is not None:
            reset_at = now + ietf[1]
    policy = headers.get("ratelimit-policy")
    if policy:
        limit = parse_policy_limit(policy)
    blocked: float | None = None
    retry = parse_reset(headers.get("retry-after"), now) if status == 429 else None
    if retry is not None:
        # A 429 names its reset in Retry-After; one without it names none, and stops nothing (the
        # call's own retry policy decides). A huge number reads as a unix time: only a broken header.
        blocked = retry
    elif wechat and (until := wechat_reset(provider_code, now)) is not None:
        blocked = until
    elif remaining == 0:
        blocked = reset_at if reset_at is not None else now + DEFAULT_BLOCK
    if blocked is not None:
        blocked = min(blocked, now + MAX_BLOCK)
        if blocked <= now:
            blocked = None
    if remaining is None and limit is None and blocked is None:
        return None
    return Observation(remaining, limit, reset_at, blocked)


@dataclass
class ProviderState:
    remaining: int | None = None
    limit: int | None = None
    reset_at: float | None = None
    blocked_until: float = 0.0
    updated_at: float = 0.0


class ProviderQuotas:
    """What the gateway has learned per service; bounded by the configured services."""

    def __init__(self) -> None:
        self._services: dict[str, ProviderState] = {}

    def learn(self, service: str, seen: Observation, now: float) -> ProviderState:
        state = self._services.setdefault(service, ProviderState())
        if seen.remaining is not None:
            state.remaining = seen.remaining
        if seen.limit is not None:
            state.limit = seen.limit
        if seen.reset_at is not None:
            state.reset_at = seen.reset_at
        if seen.blocked_until is not None:
            state.blocked_until = max(state.blocked_until, seen.blocked_until)
            state.remaining = 0
        state.updated_at = now
        return state

    def block(self, service: str, until: float, now: float) -> None:
        """A block another instance learned (read from the shared store)."""
        state = self._services.setdefault(service, ProviderState())
        if until > state.blocked_until:
            state.blocked_until = until
            state.remaining = 0
            state.updated_at = now

    def blocked_until(self, service: str, now: float) -> float | None:
        state = self._services.get(service)
        if state is None or state.blocked_until <= now:
            return None
        return state.blocked_until

    def remaining(self, service: str, now: float) -> int | None:
        state = self._services.get(service)
        if state is None:
            return None
        if state.remaining == 0 and state.blocked_until <= now and (state.reset_at is None or state.reset_at <= now):
            return None  # the reset has passed: unknown again until the next answer says
        return state.remaining

    def retain(self, services: set[str]) -> None:
        for name in [n for n in self._services if n not in services]:
            del self._services[name]

    def status(self, now: float) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for name, state in sorted(self._services.items()):
            blocked = state.blocked_until > now
            out[name] = {
                "remaining": self.remaining(name, now),
                "limit": state.limit,
                "reset_in_s": round(state.reset_at - now, 3) if state.reset_at and state.reset_at > now else None,
                "blocked": blocked,
                "blocked_for_s": round(state.blocked_until - now, 3) if blocked else 0,
                "learned_s_ago": round(now - state.updated_at, 3),
            }
        return out

