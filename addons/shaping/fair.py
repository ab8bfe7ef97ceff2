"""The fair queue of one quota counter: round-robin across apps, oldest first within an app.

Pure bookkeeping; the glue decides when the head may try for room (at the window's edge) and what
waiting means (a future, a timeout). Every operation is O(1) but `remove` of a waiter in the middle,
which is O(waiters of that app)."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator


class FairQueue[W]:
    def __init__(self) -> None:
        # Apps in turn order: the first is served next, then moves to the back if it still waits.
        self._apps: OrderedDict[str, deque[W]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def push(self, app: str, waiter: W) -> None:
        line = self._apps.get(app)
        if line is None:
            line = self._apps[app] = deque()
        line.append(waiter)
        self._size += 1

    def head(self) -> W | None:
        """The waiter whose turn it is, left in place (it leaves by pop() once admitted)."""
        for line in self._apps.values():
            return line[0]
        return None

    def pop(self) -> W | None:
        """Take the head and pass the turn to the next app."""
        if not self._apps:
            return None
        app, line = next(iter(self._apps.items()))
        waiter = line.popleft()
        self._size -= 1
        if line:
            self._apps.move_to_end(app)
        else:
            del self._apps[app]
        return waiter

    def remove(self, app: str, waiter: W) -> bool:
        line = self._apps.get(app)
        if line is None:
            return False
        try:
            line.remove(waiter)
        except ValueError:
            return False
        self._size -= 1
        if not line:
            del self._apps[app]
        return True

    def __iter__(self) -> Iterator[W]:
        for line in self._apps.values():
            yield from line
