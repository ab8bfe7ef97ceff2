"""The `quota:` entries of the rule files (SPEC 8): one spec for services, methods and apps."""

from __future__ import annotations

from typing import Literal

from addons.rules.fields import Model, RateField, TimeZone
from addons.shaping.schema import QueueWait


class QuotaSpec(Model):
    """One quota of a service or a method: `per: app` counts each caller apart, `per: service`
    counts every caller together (it protects the provider)."""

    limit: RateField
    per: Literal["app", "service"] = "app"
    tz: TimeZone = None
    queue: QueueWait = None  # shaping (SPEC 14): over the limit, wait up to this long for room


class AppQuotaSpec(QuotaSpec):
    """One quota of an app: the same spec, counted per app only (an app's quota has no service to
    share it with, so `per: service` is refused where it is written)."""

    per: Literal["app"] = "app"
