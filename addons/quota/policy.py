"""Which quotas apply to a call (SPEC 8), and the headers that tell the caller about them.

Pure policy: the counting is the state store's. Both functions run on every call, so what depends
only on the rules is computed once and cached: the list of checks per (app, service, method) and
rule-set version, and the header text per quota.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from addons.state.base import Admission, QuotaCheck
from addons.units import WINDOW_NAMES

if TYPE_CHECKING:
    from addons.quota.schema import AppQuotaSpec, QuotaSpec

UNKNOWN_APP = "_"  # per-app quotas of an unidentified caller all count under this name

_EMPTY: tuple[()] = ()
_CACHE_MAX = 8192
# (app, service, method, id of each quota list) -> (valid from, valid until, checks, the lists).
# The lists themselves are kept in the entry, so their ids cannot be reused by other objects while
# the entry lives; a rules reload brings new lists, hence new keys, and old entries age out when
# the cache is cleared at its bound.
_checks_cache: dict[
    tuple[str | None, str, str, int, int, int],
    tuple[float, float, tuple[QuotaCheck, ...], tuple[object, object, object]],
] = {}


def _utc_offset(tz: str, now: float) -> int:
    offset = datetime.fromtimestamp(now, ZoneInfo(tz)).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def quota_checks(
    app: str | None,
    app_quotas: Sequence[AppQuotaSpec] | None,
    service: str,
    service_quotas: Sequence[QuotaSpec] | None,
    method: str,
    method_quotas: Sequence[QuotaSpec] | None,
    now: float | None = None,
) -> list[QuotaCheck]:
    """Every quota that applies to one call of `service.method` by `app` (None: unidentified).

    Order: the app's own quotas, then the service's, then the method's (the first that refuses is
    the one named to the caller). Two entries that would count into the same counter (same key,
    window and time zone) are merged into the stricter one, since a store counts each counter once
    per call. `now` (default: the current time) picks the UTC offset of a quota's `tz`.
    """
    aq = app_quotas or _EMPTY
    sq = service_quotas or _EMPTY
    mq = method_quotas or _EMPTY
    if not (aq or sq or mq):
        return []
    if now is None:
        now = time.time()
    cache_key = (app, service, method, id(aq), id(sq), id(mq))
    entry = _checks_cache.get(cache_key)
    if entry is not None and entry[0] <= now < entry[1]:
        return list(entry[2])
    checks, valid_from, valid_until = _build(app, aq, service, sq, method, mq, now)
    if len(_checks_cache) >= _CACHE_MAX:
        _checks_cache.clear()
    _checks_cache[cache_key] = (valid_from, valid_until, checks, (aq, sq, mq))
    return list(checks)


def _build(
    app: str | None,
    aq: Sequence[AppQuotaSpec],
    service: str,
    sq: Sequence[QuotaSpec],
    method: str,
    mq: Sequence[QuotaSpec],
    now: float,
) -> tuple[tuple[QuotaCheck, ...], float, float]:
    who = app if app is not None else UNKNOWN_APP
    merged: dict[tuple[str, int, int], QuotaCheck] = {}
    zoned = False

    def add(key: str, scope: str, spec: QuotaSpec) -> None:
        nonlocal zoned
        offset = 0
        if spec.tz:
            zoned = True
            offset = _utc_offset(spec.tz, now)
        rate = spec.limit
        ident = (key, rate.window, offset)
        previous = merged.get(ident)
        if previous is None or rate.limit < previous.limit:
            merged[ident] = QuotaCheck(key, rate.limit, rate.window, offset, scope)

    spec: QuotaSpec  # an app's quota is one too (AppQuotaSpec only narrows `per`)
    for spec in aq:
        add(f"app:{who}", "app", spec)
    for spec in sq:
        add(f"svc:{service}" if spec.per == "service" else f"svc:{service}|app:{who}", "service", spec)
    for spec in mq:
        base = f"m:{service}.{method}"
        add(base if spec.per == "service" else f"{base}|app:{who}", "method", spec)

    if not zoned:
        return tuple(merged.values()), -math.inf, math.inf
    # A zone's offset changes only at a DST transition, always on a minute boundary: the checks
    # hold for the rest of this minute.
    minute = now // 60 * 60
    return tuple(merged.values()), minute, minute + 60


# -- RateLimit headers (draft-ietf-httpapi-ratelimit-headers) ------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._/-]")


def policy_name(check: QuotaCheck) -> str:
    """A stable, caller-safe name for a quota: what it limits, whether per app, and its window.

    `svc:wechat|app:order-service` per minute -> `wechat/app/minute`; `app:order-service` per
    day -> `app/day`; `m:wechat.send_msg` per second -> `wechat.send_msg/second`. The app's own
    name is left out, so the policy reads the same for every caller; only the characters of a
    structured-field token-like name remain, so nothing can break the header's syntax.
    """
    base, _, who = check.key.partition("|")
    kind, _, target = base.partition(":")
    if kind == "app" or not target:
        parts = [check.scope]
    else:
        parts = [target, "app"] if who.startswith("app:") else [target]
    parts.append(WINDOW_NAMES.get(check.window, f"{check.window}s"))
    return _UNSAFE.sub("_", "/".join(parts))[:64]


@lru_cache(maxsize=4096)
def _policy_text(check: QuotaCheck) -> tuple[str, str]:
    name = policy_name(check)
    return f'"{name}";q={check.limit};w={check.window}', f'"{name}";r='


def ratelimit_headers(check: QuotaCheck, remaining: int, now: float,
                      refused: bool | None = None) -> dict[str, str]:
    """`RateLimit-Policy` and `RateLimit` for one quota, plus `Retry-After` when the call is refused.

    `refused` None means: refused when nothing remains (a refused call's quota has 0 remaining).
    """
    policy, prefix = _policy_text(check)
    reset = check.reset_after(now)
    if remaining < 0:
        remaining = 0
    headers = {"RateLimit-Policy": policy, "RateLimit": f"{prefix}{remaining};t={reset}"}
    if refused or (refused is None and remaining == 0):
        headers["Retry-After"] = str(reset)
    return headers


def admission_headers(admission: Admission, checks: Sequence[QuotaCheck], now: float) -> dict[str, str]:
    """The headers of a call's answer: the refusing quota, or else the one with the least room left."""
    if admission.refused is not None:
        return ratelimit_headers(admission.refused, 0, now, refused=True)
    remaining = admission.remaining
    if not checks or len(remaining) != len(checks):
        return {}
    tightest = min(range(len(checks)), key=remaining.__getitem__)
    return ratelimit_headers(checks[tightest], remaining[tightest], now, refused=False)


def per_app_only(checks: Sequence[QuotaCheck]) -> list[QuotaCheck]:
    """The quotas of a call the provider never sees (a cache hit): the app's own, not `per: service`
    ones, which protect the provider. Per-app keys are `app:...` or end in `|app:...`."""
    return [c for c in checks if c.key.startswith("app:") or "|app:" in c.key]
