"""Durations (`250ms`, `5s`, `2m`, `1h`) and rates (`10/s`, `100/min`, `5000/hour`, `50000/day`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

# Window names as written after the slash, and their length in seconds.
WINDOWS: dict[str, int] = {
    "s": 1, "sec": 1, "second": 1,
    "m": 60, "min": 60, "minute": 60,
    "h": 3600, "hour": 3600,
    "d": 86400, "day": 86400,
}
WINDOW_NAMES = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")


MAX_DURATION = 30 * 86400.0  # a month: longer is a typo, and huge values overflow timers


def _bounded_duration(seconds: float, given: object) -> float:
    # NaN compares false with everything: without isfinite, `timeout: .nan` would pass every check.
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_DURATION:
        raise ValueError(f"not a duration: {given!r} (a finite number of seconds, 0 to 30 days)")
    return seconds


def parse_duration(value: object) -> float:
    """Seconds in a duration. A bare number is taken as seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return _bounded_duration(float(value), value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return _bounded_duration(float(match.group(1)) * _DURATION_FACTORS[match.group(2)], value)
    raise ValueError(f"not a duration: {value!r} (write 250ms, 5s, 2m or 1h)")


@dataclass(frozen=True)
class Rate:
    limit: int
    window: int  # seconds: 1, 60, 3600 or 86400

    @property
    def window_name(self) -> str:
        return WINDOW_NAMES[self.window]

    def __str__(self) -> str:
        return f"{self.limit}/{self.window_name}"


def parse_rate(value: object) -> Rate:
    if isinstance(value, str):
        match = _RATE.match(value.lower())
        if match and match.group(2) in WINDOWS:
            limit = int(match.group(1))
            if limit < 1:
                raise ValueError(f"rate limit must be at least 1: {value!r}")
            return Rate(limit, WINDOWS[match.group(2)])
    raise ValueError(f"not a rate: {value!r} (write 10/s, 100/min, 5000/hour or 50000/day)")
