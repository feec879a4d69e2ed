"""Token expiry for every connection of a node, on one timer.

A timer per connection (`loop.call_later`) costs ~600 bytes each (the handle, its
arguments, its context) and a heap entry in the loop. This keeps one heap of
(deadline, n, weak reference) and one timer for the earliest deadline. A connection
that ends before its token does is forgotten lazily; when the forgotten outnumber the
live, the heap is rebuilt without them.
"""

from __future__ import annotations

import asyncio
import heapq
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Expiries(Generic[T]):
    def __init__(self, expire: Callable[[T], None], clock: Callable[[], float]) -> None:
        self._expire = expire  # called with each item whose deadline has passed
        self._clock = clock  # wall clock (token `exp` is unix time)
        self._heap: list[tuple[float, int, weakref.ref[T]]] = []
        self._n = 0
        self._forgotten = 0  # entries in the heap whose item ended
        self._queued: weakref.WeakSet[T] = weakref.WeakSet()  # items with a live entry in the heap
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def __len__(self) -> int:
        return len(self._heap) - self._forgotten

    def add(self, item: T, deadline: float) -> None:
        """Expire `item` at unix time `deadline`."""
        self._n += 1
        heapq.heappush(self._heap, (deadline, self._n, weakref.ref(item)))
        self._queued.add(item)
        if deadline < self._timer_at:
            self._schedule(deadline)

    def forget(self, item: T) -> None:
        """`item` (whose `ended` is now true) ended before its deadline: its entry goes lazily."""
        if item not in self._queued:
            return  # its entry is gone already (it expired, then ended)
        self._queued.discard(item)
        self._forgotten += 1
        if self._forgotten > 64 and self._forgotten * 2 > len(self._heap):
            self._heap = [e for e in self._heap if (x := e[2]()) is not None and self._alive(x)]
            heapq.heapify(self._heap)
            self._forgotten = 0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, float("inf")

    # ------------------------------------------------------------------------------
    @staticmethod
    def _alive(item: object) -> bool:
        return not getattr(item, "ended", False)

    def _schedule(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = deadline
        self._timer = loop.call_later(max(0.0, deadline - self._clock()), self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        now = self._clock()
        while self._heap and self._heap[0][0] <= now:
            _, _, ref = heapq.heappop(self._heap)
            item = ref()
            if item is None or not self._alive(item):
                self._forgotten = max(0, self._forgotten - 1)
                continue
            self._queued.discard(item)
            self._expire(item)
        if self._heap:
            self._schedule(self._heap[0][0])
