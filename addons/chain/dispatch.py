"""Dispatch each mitmproxy event to the hooks that exist, worked out once per chain (SPEC 11).

mitmproxy's AddonManager finds an event's hooks anew for every event of every flow: for each addon
of the chain it walks the addon and its children (a generator per level), asks each for an
attribute of the event's name under a context manager, and then does it all again for the `update`
event that follows every flow event, whether or not any addon has an `update` hook. For a call
through the gateway that is about a fifth of the process (py-spy), for hooks most of which do not
exist. `MemoDispatch` swaps the master's AddonManager for `MemoAddonManager`, which keeps, per
event name, the hooks found, and forgets them whenever the chain can have changed: an addon
registered or removed (scripts loading and reloading go through those), the chain cleared, or an
option changed (the `scripts` option reorders scripts without either). Errors are handled as
mitmproxy does: an exception in a hook is logged as an addon error and skips that top-level addon's
remaining hooks for the event, `AddonHalt` ends the event, `OptionsError` propagates.

Kept on with `gateway_lean` (the default); `--set gateway_lean=false` leaves mitmproxy's own
manager in place."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import types
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, exceptions, flow, hooks
from mitmproxy.addonmanager import AddonManager, traverse

logger = logging.getLogger("mitmproxy.addonmanager")  # where mitmproxy logs an addon's error

Hooks = list[list[Callable[..., Any]]]  # one list of hook callables per top-level addon that has any
_ARG_NAMES: dict[type, tuple[str, ...]] = {}


def event_args(event: hooks.Hook) -> list[Any]:
    """`event.args()` without `dataclasses.fields` on every call."""
    names = _ARG_NAMES.get(type(event))
    if names is None:
        names = _ARG_NAMES[type(event)] = tuple(f.name for f in dataclasses.fields(event))  # type: ignore[arg-type]
    return [getattr(event, name) for name in names]


class MemoAddonManager(AddonManager):
    """mitmproxy's AddonManager with each event's hooks looked up once per chain change."""

    _memo: dict[str, Hooks | None]

    def forget(self, *_: Any, **__: Any) -> None:  # also an options.changed receiver (updated=...)
        self._memo = {}

    def register(self, addon: Any) -> Any:
        self.forget()
        return super().register(addon)

    def add(self, *addons: Any) -> None:
        super().add(*addons)
        self.forget()

    def remove(self, addon: Any) -> None:
        self.forget()
        super().remove(addon)

    def clear(self) -> None:
        super().clear()
        self.forget()

    def hooks_for(self, name: str) -> Hooks | None:
        """The hooks of event `name`, grouped by top-level addon; None: an addon has a non-callable
        attribute of that name, which mitmproxy's own lookup reports (the stock path is taken)."""
        try:
            return self._memo[name]
        except KeyError:
            pass
        found: Hooks | None = []
        for top in self.chain:
            funcs = []
            for addon in traverse([top]):
                func = getattr(addon, name, None)
                if func is None or isinstance(func, types.ModuleType):
                    continue  # mitmproxy too skips a module imported under a hook's name
                if not callable(func):
                    found = None
                    break
                funcs.append(func)
            if found is None:
                break
            if funcs:
                found.append(funcs)
        self._memo[name] = found
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        groups = self.hooks_for(event.name)
        if groups is None:
            await super().trigger_event(event)
            return
        if not groups:
            return
        args = event_args(event)
        for funcs in groups:
            try:
                for func in funcs:
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as exc:
                logger.error(f"Addon error: {exc}", exc_info=True)

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        await self.trigger_event(event)
        # mitmproxy follows every flow event with `update`; only mitmweb's view has a hook for it.
        if self.hooks_for("update") != []:
            message = event_args(event)[0]
            if isinstance(message, flow.Flow):
                await self.trigger_event(hooks.UpdateHook([message]))


def memoize(manager: AddonManager) -> MemoAddonManager:
    """Turn the master's AddonManager into a MemoAddonManager in place (same state, same lookup)."""
    if not isinstance(manager, MemoAddonManager):
        manager.__class__ = MemoAddonManager
        manager.master.options.changed.connect(manager.forget)  # type: ignore[attr-defined]
    assert isinstance(manager, MemoAddonManager)
    manager.forget()
    return manager


class MemoDispatch:
    def running(self) -> None:
        # Sync, as mitmproxy runs a reloaded script's running hook from sync code.
        if ctx.options.gateway_lean and not isinstance(ctx.master.addons, MemoAddonManager):
            memoize(ctx.master.addons)
            logging.getLogger("gateway").info("gateway: hook dispatch memoized (each event's hooks "
                                              "looked up once per change of the addon chain)")
