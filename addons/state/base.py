"""The state store: quotas, nonces, tokens and locks, in memory or in Redis, behind one interface.

Every method is async and bounded in time; a backend that cannot answer raises StateUnavailable,
and the caller decides (SPEC 8 `state_failure`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class StateUnavailable(Exception):
    """The shared store did not answer in time or refused (Redis down, timeout)."""


@dataclass(frozen=True)
class QuotaCheck:
    """One quota that applies to a call.

    key: stable identity of the counter without the window, e.g. "svc:wechat", "app:order-service",
         "svc:wechat|app:order-service", "m:wechat.send_msg|app:order-service".
    limit: calls admitted per window.  window: 1, 60, 3600 or 86400 seconds.
    offset: seconds east of UTC of the window's edge (tz of a day window), 0 for UTC.
    scope: metric label and RateLimit-Policy name ("app", "service", "method").
    """

    key: str
    limit: int
    window: int
    offset: int = 0
    scope: str = "service"

    def window_start(self, now: float) -> int:
        return int((now + self.offset) // self.window * self.window - self.offset)

    def reset_after(self, now: float) -> int:
        """Whole seconds until this window ends (at least 1)."""
        return max(1, int(self.window_start(now) + self.window - now + 0.999))


@dataclass(frozen=True)
class Admission:
    admitted: bool
    refused: QuotaCheck | None = None  # the first quota without room, when refused
    remaining: tuple[int, ...] = ()  # per check, after this call (admitted) or now (refused)
    degraded: bool = False  # decided by the local fallback while the shared store is unreachable


class StateStore(Protocol):
    async def admit(self, checks: list[QuotaCheck], now: float) -> Admission:
        """All-or-nothing: admit and count against every check, or count nothing."""

    def admit_now(self, checks: list[QuotaCheck], now: float) -> Admission | None:
        """admit() decided at once, without waiting, by a store that can (in-process counting);
        None from a store that must wait for an answer (then the caller awaits admit())."""

    async def first_use(self, key: str, ttl: float) -> bool:
        """True the first time `key` is seen within `ttl` seconds (nonces)."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def acquire(self, key: str, ttl: float) -> str | None:
        """A lock held for at most `ttl`; returns a token to release it, None if held elsewhere."""

    async def release(self, key: str, token: str) -> None: ...

    async def close(self) -> None: ...
