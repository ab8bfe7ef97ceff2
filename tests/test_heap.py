"""The frozen heap (addons/chain/heap.py): long-lived objects are kept out of full collections once
the gateway runs, and a reload's garbage is still freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from mitmproxy.test import taddons

from addons.chain.context import GatewayContext
from addons.chain.heap import FrozenHeap
from tests.conftest import until


class RuleSet:
    """Stands in for a compiled rule set: it holds a reference cycle, as compiled rules do."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    yield
    gc.unfreeze()  # the heap is the test process's own: leave it as found


async def test_running_freezes_and_done_thaws() -> None:
    heap = FrozenHeap(GatewayContext())
    with taddons.context(heap):
        heap.running()
        assert gc.get_freeze_count() > 1000
        heap.done()
        assert gc.get_freeze_count() == 0


async def test_gateway_gc_freeze_false_leaves_the_collector_alone() -> None:
    heap = FrozenHeap(GatewayContext())
    with taddons.context(heap) as tctx:
        tctx.configure(heap, gateway_gc_freeze=False)
        heap.running()
        assert gc.get_freeze_count() == 0


async def test_a_reload_thaws_at_once_and_the_old_rule_set_is_freed_before_refreezing() -> None:
    gw = GatewayContext()
    heap = FrozenHeap(gw)
    heap.refreeze_after = 0.05
    with taddons.context(heap):
        old = RuleSet()
        gone = weakref.ref(old)
        heap.running()  # `old` is frozen with the rest
        assert gc.get_freeze_count() > 0
        del old  # the reload replaces it: only its own cycle holds it now
        for listener in gw.on_rules_changed:
            listener(RuleSet())
        assert gc.get_freeze_count() == 0  # thawed at once
        await until(lambda: gc.get_freeze_count() > 0, what="the refreeze")  # frozen again, after a collection
        assert gone() is None  # the old rule set did not stay frozen
        heap.done()


async def test_turning_it_off_at_run_time_thaws() -> None:
    heap = FrozenHeap(GatewayContext())
    with taddons.context(heap) as tctx:
        heap.running()
        assert gc.get_freeze_count() > 0
        tctx.configure(heap, gateway_gc_freeze=False)
        assert gc.get_freeze_count() == 0
