"""Keep the gateway's long-lived objects out of the cyclic garbage collector's way (SPEC 11).

Python's collector, in its oldest generation, walks every tracked object the process holds. Under
load the gateway starts such a full collection every few seconds, and each took about 100 ms (the
compiled rules, the imported modules, mitmproxy itself): a pause in which no caller is served, so
the p99 latency at full load was three times bare mitmdump's. Objects that live as long as the
process (or as one rule set) need not be walked: at `running`, `FrozenHeap` collects once and then
freezes what is left (`gc.freeze()`: moved to a generation no collection visits). A full collection
then took under 10 ms in the bench.

A rule reload makes the old rule set garbage, which a frozen heap would keep: the heap is thawed at
once and frozen again `REFREEZE_AFTER` seconds later (after one collection), by when calls that
still held the old rule set have ended. A call that outlives that keeps the old set alive until
the next reload, a bounded cost. `--set gateway_gc_freeze=false` leaves the collector as it is."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from mitmproxy import ctx

from addons.chain.context import GatewayContext

log = logging.getLogger("gateway")

REFREEZE_AFTER = 30.0  # seconds after a reload; calls are bounded by their timeouts well below that


class FrozenHeap:
    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        self.refreeze_after = REFREEZE_AFTER
        self._running = False
        self._timer: asyncio.TimerHandle | None = None
        gw.on_rules_changed.append(self._rules_changed)

    def load(self, loader) -> None:
        loader.add_option("gateway_gc_freeze", bool, True,
                          "Freeze the objects alive once the gateway has started (and again after each "
                          "rule reload) so the garbage collector's full collections skip them.")

    def configure(self, updated: set[str]) -> None:
        if "gateway_gc_freeze" in updated and not ctx.options.gateway_gc_freeze:
            self.thaw()

    def running(self) -> None:
        # Sync, as mitmproxy runs a reloaded script's running hook from sync code.
        self._running = True
        if ctx.options.gateway_gc_freeze:
            self.freeze()

    def done(self) -> None:
        self._running = False
        self.thaw()

    def freeze(self) -> None:
        self._timer = None
        started = time.perf_counter()
        gc.collect()
        gc.freeze()
        log.info("gateway: heap frozen: %d objects kept out of garbage collections (%.0f ms)",
                 gc.get_freeze_count(), (time.perf_counter() - started) * 1000)

    def thaw(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if gc.get_freeze_count():
            gc.unfreeze()

    def _rules_changed(self, compiled: object) -> None:
        if not self._running or not ctx.options.gateway_gc_freeze:
            return  # the first load comes before `running`, which freezes
        self.thaw()
        try:
            self._timer = asyncio.get_running_loop().call_later(self.refreeze_after, self.freeze)
        except RuntimeError:  # no loop (a reload outside the proxy): frozen again at the next start
            pass
