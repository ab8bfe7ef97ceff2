"""The in-process store: least recently used out, bounded by the bytes its entries hold."""

from __future__ import annotations

import time
from collections import OrderedDict

from addons.cache.policy import Entry


class MemoryCache:
    immediate = True  # lookups need no await

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evicted = 0
        self._entries: OrderedDict[str, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get_now(self, key: str, now: float | None = None) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.stale_until <= (time.time() if now is None else now):
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def set_now(self, key: str, entry: Entry) -> None:
        size = entry.size
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = entry
        self.bytes += size
        self.resize(self.max_bytes)

    def resize(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        while self.bytes > self.max_bytes and self._entries:
            key = next(iter(self._entries))
            self._drop(key)
            self.evicted += 1

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size

    def purge_now(self, service: str, method: str | None = None) -> int:
        prefix = f"{service}.{method}:" if method else f"{service}."
        doomed = [k for k in self._entries if k.startswith(prefix)]
        for key in doomed:
            self._drop(key)
        return len(doomed)

    async def get(self, key: str) -> Entry | None:
        return self.get_now(key)

    async def set(self, key: str, entry: Entry) -> None:
        self.set_now(key, entry)

    async def purge(self, service: str, method: str | None = None) -> int:
        return self.purge_now(service, method)

    async def status(self) -> dict[str, object]:
        return {"backend": "memory", "entries": len(self._entries), "bytes": self.bytes,
                "max_bytes": self.max_bytes, "evicted": self.evicted}

    async def close(self) -> None:
        self._entries.clear()
        self.bytes = 0
