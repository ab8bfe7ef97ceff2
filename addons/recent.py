"""What the status page shows that no other part keeps (SPEC 19): the most recent failed calls, in a
bounded ring, and each quota counter as the last call that checked it found it. Pure; recording
costs the call path a deque append (failures only) and a dict write per quota checked."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from addons.call import Call
    from addons.redact import Redactor
    from addons.state.base import Admission, QuotaCheck


@dataclass(frozen=True, slots=True)
class FailedCall:
    ts: float
    code: int
    status: int | None
    rule: str  # service.method
    app: str | None
    message: str  # redacted
    request_id: str


class RecentFailures:
    """The newest `size` failed calls; older ones fall off."""

    def __init__(self, size: int = 50) -> None:
        self._ring: collections.deque[FailedCall] = collections.deque(maxlen=size)
        self.total = 0

    def add(self, call: Call, redactor: Redactor) -> None:
        message = call.message or call.error
        self.total += 1
        self._ring.append(FailedCall(call.ts, call.code or 0, call.status, call.rule, call.app,
                                     redactor.text(message)[:300] if message else "", call.request_id))

    def newest_first(self) -> list[FailedCall]:
        return list(reversed(self._ring))


@dataclass(frozen=True, slots=True)
class QuotaReading:
    key: str
    scope: str
    limit: int
    window: int
    used: int  # in the window of `window_start`, as of `seen_at`
    window_start: int
    seen_at: float


class QuotaUse:
    """Each quota counter as last seen (by this process; with Redis, the fleet's count then).
    Bounded: the counter keys come from the rules, and the table is cleared when it grows past
    `size` (a rules reload that renamed many apps or services)."""

    def __init__(self, size: int = 4096) -> None:
        self._readings: dict[str, QuotaReading] = {}
        self.size = size

    def note(self, checks: list[QuotaCheck], admission: Admission, now: float) -> None:
        remaining = admission.remaining
        if len(remaining) != len(checks):
            return
        if len(self._readings) > self.size:
            self._readings.clear()
        for check, left in zip(checks, remaining, strict=True):
            self._readings[check.key] = QuotaReading(check.key, check.scope, check.limit, check.window,
                                                     max(0, check.limit - left), check.window_start(now), now)

    def current(self, now: float | None = None) -> list[QuotaReading]:
        """Every counter, its use 0 once its window has passed."""
        now = time.time() if now is None else now
        shown = []
        for reading in sorted(self._readings.values(), key=lambda r: r.key):
            if now >= reading.window_start + reading.window:
                reading = QuotaReading(reading.key, reading.scope, reading.limit, reading.window, 0,
                                       reading.window_start, reading.seen_at)
            shown.append(reading)
        return shown
