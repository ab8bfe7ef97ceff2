"""Single flight: identical misses in flight at the same time make one provider call (in a process).

The first miss of a key leads: it calls the provider and lands the flight with what the caller got.
Misses of the same key that arrive meanwhile follow: they wait for that answer instead of calling.
A flight that lands with nothing (the leader's own code failed) sends its followers on their own."""

from __future__ import annotations

import asyncio
from typing import Any


class SingleFlight:
    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[Any]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, key: str) -> asyncio.Future[Any] | None:
        return self._flights.get(key)

    def lead(self, key: str) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        return future

    def land(self, key: str, future: asyncio.Future[Any], result: Any) -> None:
        if self._flights.get(key) is future:
            del self._flights[key]
        if not future.done():
            future.set_result(result)

    @staticmethod
    async def follow(future: asyncio.Future[Any]) -> Any:
        # shield: a follower that goes away (its client hung up) must not cancel the others' answer.
        return await asyncio.shield(future)
