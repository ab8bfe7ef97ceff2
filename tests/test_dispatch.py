"""The memoized hook dispatch (addons/chain/dispatch.py) calls what mitmproxy's own AddonManager
calls, in the same order, with the same error handling, and sees every change of the chain."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from mitmproxy import exceptions, hooks
from mitmproxy.addonmanager import AddonManager
from mitmproxy.proxy import layers
from mitmproxy.test import taddons, tflow

from addons.chain.dispatch import MemoAddonManager, memoize


class Recorder:
    """An addon that notes its hook calls in a shared list; `fail`/`halt` name hooks that raise."""

    def __init__(self, name: str, seen: list[str], fail: str = "", halt: str = "",
                 children: list[Any] | None = None) -> None:
        self.name = name
        self.seen = seen
        self.fail = fail
        self.halt = halt
        if children is not None:
            self.addons = children

    def _note(self, hook: str) -> None:
        self.seen.append(f"{self.name}.{hook}")
        if hook == self.fail:
            raise ValueError(f"{self.name} failed in {hook}")
        if hook == self.halt:
            raise exceptions.AddonHalt()

    def requestheaders(self, flow: Any) -> None:
        self._note("requestheaders")

    async def request(self, flow: Any) -> None:
        self._note("request")

    def response(self, flow: Any) -> None:
        self._note("response")


def scenario(seen: list[str]) -> list[Any]:
    """Three top-level addons, the second with two children (as a script's module is)."""
    return [
        Recorder("a", seen, fail="requestheaders"),
        Recorder("b", seen, children=[Recorder("b1", seen, fail="request"), Recorder("b2", seen)]),
        Recorder("c", seen, halt="response"),
        Recorder("d", seen),
    ]


async def run_events(manager: AddonManager) -> None:
    f = tflow.tflow()
    for hook in (layers.http.HttpRequestHeadersHook(f), layers.http.HttpRequestHook(f),
                 layers.http.HttpResponseHook(f)):
        await manager.handle_lifecycle(hook)


async def test_same_calls_order_and_error_handling_as_mitmproxys_manager(caplog: pytest.LogCaptureFixture) -> None:
    results = []
    for memo in (False, True):
        seen: list[str] = []
        with taddons.context() as tctx:
            manager = tctx.master.addons
            if memo:
                memoize(manager)
            manager.add(*scenario(seen))
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                await run_events(manager)
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        results.append((seen, errors))
    (stock_seen, stock_errors), (memo_seen, memo_errors) = results
    assert memo_seen == stock_seen
    # a's failing requestheaders is logged and b, c, d still run; b1's failing request skips b2's
    # request (same top-level addon) but not c's; c's AddonHalt in response ends the event before d.
    assert memo_seen == ["a.requestheaders", "b.requestheaders", "b1.requestheaders", "b2.requestheaders",
                         "c.requestheaders", "d.requestheaders",
                         "a.request", "b.request", "b1.request", "c.request", "d.request",
                         "a.response", "b.response", "b1.response", "b2.response", "c.response"]
    assert memo_errors == stock_errors == ["Addon error: a failed in requestheaders",
                                           "Addon error: b1 failed in request"]


async def test_an_addon_added_or_removed_after_dispatch_is_seen() -> None:
    seen: list[str] = []
    with taddons.context() as tctx:
        manager = memoize(tctx.master.addons)
        first = Recorder("first", seen)
        manager.add(first)
        await run_events(manager)
        later = Recorder("later", seen)
        manager.add(later)
        manager.remove(first)
        seen.clear()
        await run_events(manager)
    assert seen == ["later.requestheaders", "later.request", "later.response"]


async def test_a_reloaded_child_replaces_the_old_one() -> None:
    """A script reload removes the old module and registers the new one, its parent unchanged."""
    seen: list[str] = []
    with taddons.context() as tctx:
        manager = memoize(tctx.master.addons)
        parent = Recorder("script", [], children=[])
        manager.add(parent)
        old = Recorder("old", seen)
        manager.register(old)
        parent.addons = [old]
        await run_events(manager)
        manager.remove(old)
        new = Recorder("new", seen)
        manager.register(new)
        parent.addons = [new]
        seen.clear()
        await run_events(manager)
    assert seen == ["new.requestheaders", "new.request", "new.response"]


async def test_update_follows_flow_events_only_when_an_addon_has_it() -> None:
    updates: list[int] = []

    class View:
        def update(self, flows: list[Any]) -> None:
            updates.append(len(flows))

    with taddons.context() as tctx:
        manager = memoize(tctx.master.addons)
        manager.add(Recorder("r", []))
        await run_events(manager)
        assert updates == []
        manager.add(View())
        await run_events(manager)
    assert updates == [1, 1, 1]


async def test_a_non_callable_attribute_is_reported_as_mitmproxy_does(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        request = 42

    with taddons.context() as tctx:
        manager = memoize(tctx.master.addons)
        manager.add(Broken())
        with caplog.at_level(logging.ERROR):
            await manager.handle_lifecycle(layers.http.HttpRequestHook(tflow.tflow()))
    assert any("not callable" in r.getMessage() for r in caplog.records)


async def test_an_option_change_forgets_the_hooks() -> None:
    with taddons.context() as tctx:
        manager = memoize(tctx.master.addons)
        assert isinstance(manager, MemoAddonManager)
        manager.hooks_for("request")
        assert "request" in manager._memo
        tctx.options.update(showhost=True)
        assert manager._memo == {}
        await manager.trigger_event(hooks.UpdateHook([]))  # rebuilt: no addon has `update`
        assert manager._memo == {"update": []}
