"""The in-process state store: one gateway process, or the local fallback while Redis is away.

Everything here runs on every call, so it is plain dict work with no await on anything slow. Each
kind of entry (quota counters, nonces, cached values, locks) expires through a min-heap of
(expires_at, key): the head of the heap says in O(1) whether anything is due, so pruning costs
nothing until something has actually expired and never scans the whole table.
"""

from __future__ import annotations

import heapq
import secrets
import time
from collections.abc import Callable, Hashable
from typing import Any

from addons.state.base import Admission, QuotaCheck


class _Expiring:
    """A dict whose entries carry an expiry; expired entries are invisible and dropped lazily."""

    __slots__ = ("_heap", "items")

    def __init__(self) -> None:
        self.items: dict[Hashable, tuple[Any, float]] = {}
        # Overwriting a key leaves its old heap entry behind; prune() only deletes a key when the
        # entry in `items` is itself expired, so a stale heap entry is harmless.
        self._heap: list[tuple[float, Hashable]] = []

    def get(self, key: Hashable, now: float) -> Any | None:
        entry = self.items.get(key)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def put(self, key: Hashable, value: Any, expires_at: float) -> None:
        self.items[key] = (value, expires_at)
        heapq.heappush(self._heap, (expires_at, key))

    def delete(self, key: Hashable) -> None:
        self.items.pop(key, None)

    def prune(self, now: float) -> None:
        heap = self._heap
        if not heap or heap[0][0] > now:
            return
        items = self.items
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            entry = items.get(key)
            if entry is not None and entry[1] <= now:
                del items[key]

    def __len__(self) -> int:
        return len(self.items)


class MemoryStore:
    """StateStore in this process only: exact for one instance, not shared with any other.

    Quota counters are keyed by (key, window, window_start) and live until their window ends;
    they run on the caller's `now` (wall clock, as window edges are wall-clock edges). Nonces,
    values and locks run on `clock` (monotonic by default, so a wall-clock step cannot stretch or
    cut a TTL); tests may pass their own clock.
    """

    backend = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._counters: dict[tuple[str, int, int], int] = {}
        self._counter_heap: list[tuple[int, tuple[str, int, int]]] = []
        self._nonces = _Expiring()
        self._values = _Expiring()
        self._locks = _Expiring()

    # -- quotas ---------------------------------------------------------------------------------

    async def admit(self, checks: list[QuotaCheck], now: float) -> Admission:
        return self.admit_now(checks, now)

    def admit_now(self, checks: list[QuotaCheck], now: float) -> Admission:
        """The synchronous body of admit(), for callers that are not in a coroutine.

        `checks` must not repeat a (key, window) pair (quota_checks() guarantees it): a repeated
        counter would be counted twice per call.
        """
        heap = self._counter_heap
        if heap and heap[0][0] <= now:
            self._prune_counters(now)
        counters = self._counters
        ids: list[tuple[str, int, int]] = []
        for check in checks:
            counter_id = (check.key, check.window, check.window_start(now))
            if counters.get(counter_id, 0) >= check.limit:
                return Admission(False, check, self._remaining_now(checks, now))
            ids.append(counter_id)
        # Every check has room: count them all (nothing above awaited, so no other call interleaved).
        remaining: list[int] = []
        for check, counter_id in zip(checks, ids, strict=True):
            count = counters.get(counter_id, 0) + 1
            counters[counter_id] = count
            if count == 1:  # a new window: its counter is dropped when the window ends
                heapq.heappush(heap, (counter_id[2] + counter_id[1], counter_id))
            remaining.append(check.limit - count)
        return Admission(True, None, tuple(remaining))

    def _remaining_now(self, checks: list[QuotaCheck], now: float) -> tuple[int, ...]:
        counters = self._counters
        return tuple(
            max(0, c.limit - counters.get((c.key, c.window, c.window_start(now)), 0)) for c in checks
        )

    def _prune_counters(self, now: float) -> None:
        heap = self._counter_heap
        counters = self._counters
        while heap and heap[0][0] <= now:
            _, counter_id = heapq.heappop(heap)
            counters.pop(counter_id, None)

    # -- nonces, values, locks ------------------------------------------------------------------

    async def first_use(self, key: str, ttl: float) -> bool:
        now = self._clock()
        nonces = self._nonces
        nonces.prune(now)
        if nonces.get(key, now) is not None:
            return False
        nonces.put(key, True, now + ttl)
        return True

    async def get(self, key: str) -> bytes | None:
        now = self._clock()
        self._values.prune(now)
        value: bytes | None = self._values.get(key, now)
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        now = self._clock()
        self._values.prune(now)
        self._values.put(key, value, now + ttl)

    async def acquire(self, key: str, ttl: float) -> str | None:
        now = self._clock()
        locks = self._locks
        locks.prune(now)
        if locks.get(key, now) is not None:
            return None
        token = secrets.token_hex(16)
        locks.put(key, token, now + ttl)
        return token

    async def release(self, key: str, token: str) -> None:
        now = self._clock()
        # Only the holder may release: a lock that expired and was taken by someone else stays theirs.
        if self._locks.get(key, now) == token:
            self._locks.delete(key)

    async def close(self) -> None:
        self._counters.clear()
        self._counter_heap.clear()
        self._nonces = _Expiring()
        self._values = _Expiring()
        self._locks = _Expiring()

    # -- operations -----------------------------------------------------------------------------

    def sizes(self) -> dict[str, int]:
        """Live entries per kind (for tests and /status: memory must stay bounded)."""
        return {
            "counters": len(self._counters),
            "nonces": len(self._nonces),
            "values": len(self._values),
            "locks": len(self._locks),
        }

    def status(self) -> dict[str, object]:
        return {"backend": self.backend, "available": True, "shared": False}
