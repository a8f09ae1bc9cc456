"""The one hand-off between threads (and into the event loop): append; if first, drain once.

Every place where one thread hands work to another thread or to the asyncio loop uses a
`Coalescer`: `put` appends under a lock and, only when the batch was empty, calls the
`wake` it was built with (a `call_soon_threadsafe`, an actor message); the drain `take`s
the whole batch. A burst of hand-offs then costs one wake-up, not one each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

T = TypeVar("T")


class Coalescer(Generic[T]):
    """Items handed over in batches; `wake()` runs once per batch, on its first item."""

    __slots__ = ("_items", "_lock", "_wake")

    def __init__(self, wake: Callable[[], None]):
        self._wake = wake
        self._lock = threading.Lock()
        self._items: list[T] = []

    def put(self, item: T) -> None:
        with self._lock:
            first = not self._items
            self._items.append(item)
        if first:
            self._wake_or_drop()

    def put_many(self, items: Iterable[T]) -> None:
        with self._lock:
            first = not self._items
            self._items.extend(items)
            first = first and bool(self._items)
        if first:
            self._wake_or_drop()

    def take(self) -> list[T]:
        """The whole batch (the next `put` wakes the consumer again)."""
        with self._lock:
            items, self._items = self._items, []
        return items

    def _wake_or_drop(self) -> None:
        try:
            self._wake()
        except BaseException:  # nobody will drain (a closed loop, a stopped system): the
            self.take()  # batch is dropped, and the next put tries to wake again
            raise
