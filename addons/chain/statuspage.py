"""Gathers what the status page at the admin root shows (SPEC 19) and renders it with
`addons.statuspage`. Optional features are read defensively through a small provider interface:
`gw.<name>` (or an entry of `gw.status_providers`) with a `status()` or `stats()` method returning a
mapping of figures, or an awaitable of one (awaited for at most a second: a Redis-backed feature that
hangs must not hang the page); a feature that is absent shows as "-"."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from addons.statuspage import PageInput, render

if TYPE_CHECKING:
    from addons.chain.admin import Admin

log = logging.getLogger("gateway")

# Section name -> attributes of the shared context that may hold the feature.
FEATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cache", ("cache",)),
    ("queues", ("queues", "shaping", "shaper", "queue")),
)


FIGURES_TIMEOUT = 1.0


async def _value(value: Any) -> Mapping[str, Any] | None:
    if inspect.isawaitable(value):
        value = await asyncio.wait_for(value, FIGURES_TIMEOUT)
    return value if isinstance(value, Mapping) else None


async def figures_of(provider: object) -> Mapping[str, Any] | None:
    if provider is None:
        return None
    if callable(provider) and not hasattr(provider, "status") and not hasattr(provider, "stats"):
        return await _value(provider())
    for name in ("status", "stats"):
        method: Callable[[], Any] | None = getattr(provider, name, None)
        if callable(method):
            return await _value(method())
    return None


async def features(admin: Admin) -> dict[str, Mapping[str, Any] | None]:
    from addons.chain.admin import clean

    gw = admin.gw
    redactor = gw.redactor
    shown: dict[str, Mapping[str, Any] | None] = {}
    providers: dict[str, Any] = {name: next((getattr(gw, a) for a in attrs if getattr(gw, a, None) is not None), None)
                                 for name, attrs in FEATURES}
    providers.update(getattr(gw, "status_providers", None) or {})
    providers["tracing"] = gw.tracer
    for name, provider in providers.items():
        try:
            figures = await figures_of(provider)
        except Exception as exc:  # a feature's own failure must not take the page down
            log.warning("gateway: status page: %s figures unavailable: %s", name, type(exc).__name__)
            figures = {"error": f"unavailable ({type(exc).__name__})"}
        shown[name] = None if figures is None else clean(dict(figures), redactor)
    return shown


async def page_html(admin: Admin) -> str:
    gw = admin.gw
    shown = await features(admin)
    return render(PageInput(status=admin.status_document(), failures=gw.recent_failures.newest_first(),
                            quotas=gw.quota_use.current(), features=shown))
