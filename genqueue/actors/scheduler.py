"""One thread that delivers every alarm and timer, in the injected clock's time."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable

from genqueue.clock import Clock

__all__ = ["Scheduler"]

log = logging.getLogger("genqueue.scheduler")


class Scheduler:
    """A heap of (time, callback) served by a single thread: never a thread per timer.

    `call_at` returns a handle; `cancel(handle)` drops the entry lazily. Callbacks run
    on the scheduler thread and must be quick (they usually `tell` an actor).
    """

    def __init__(self, clock: Clock):
        self._clock = clock
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._ids = itertools.count(1)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="alarm-scheduler", daemon=True)
        clock.on_advance(self._wake)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def call_at(self, at: float, callback: Callable[[], None]) -> int:
        handle = next(self._ids)
        with self._cv:
            earliest = not self._heap or at < self._heap[0][0]
            heapq.heappush(self._heap, (at, handle, callback))
            if earliest:
                self._cv.notify()
        return handle

    def cancel(self, handle: int) -> None:
        with self._cv:
            self._cancelled.add(handle)

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def _take_due(self) -> list[Callable[[], None]]:
        """Pop every due callback, or wait until the next one is due (lock held)."""
        now = self._clock.now()
        due = []
        while self._heap and self._heap[0][0] <= now:
            _, handle, callback = heapq.heappop(self._heap)
            if handle in self._cancelled:
                self._cancelled.discard(handle)
            else:
                due.append(callback)
        if not due:
            timeout = self._heap[0][0] - now if self._heap else None
            self._clock.wait(self._cv, timeout)
        return due

    def _run(self) -> None:
        while True:
            with self._cv:
                if self._stopping:
                    return
                due = self._take_due()
            for callback in due:
                try:
                    callback()
                except Exception:
                    log.exception("scheduler callback failed")
