"""The quotas of a compiled rule set, per (app, rule): what the chain step asks on every call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from addons.quota.policy import quota_checks
from addons.state.base import QuotaCheck

if TYPE_CHECKING:
    from addons.identity.schema import AppSpec
    from addons.rules.router import Route


class QuotaTable:
    """The checks of each (app, rule) pair of one rule set, cached: names are configured, so the
    cache is bounded. An entry is rebuilt each hour, so a `tz` day edge follows a daylight-saving
    change."""

    def __init__(self, apps: Mapping[str, AppSpec]) -> None:
        self.apps = apps
        self._cache: dict[tuple[str | None, str], tuple[list[QuotaCheck], float]] = {}

    def checks(self, app: str | None, route: Route, now: float) -> list[QuotaCheck]:
        key = (app, route.name)
        cached = self._cache.get(key)
        if cached is None or now >= cached[1]:
            app_spec = self.apps.get(app) if app else None
            spec = route.spec
            checks = quota_checks(
                app, app_spec.quota if app_spec else [],
                route.service, spec.quota if spec else [],
                route.method, route.method_spec.quota if route.method_spec else [],
                now,
            )
            cached = (checks, (now // 3600 + 1) * 3600)
            self._cache[key] = cached
        return cached[0]
