"""Time, injected: a real clock for production and a manual one that tests advance."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "ManualClock", "RealClock"]


class Clock(Protocol):
    """Where every alarm, backoff, rate limit and timeout reads the time."""

    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    def on_advance(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever time jumps (a manual clock); a real clock never calls it."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep on the running asyncio loop, in this clock's time."""
        ...

    def wait(self, cond: threading.Condition, timeout_s: float | None) -> None:
        """Wait on `cond` (held by the caller) for at most `timeout_s` of this clock's time."""
        ...


class RealClock:
    """Wall-clock time."""

    def now(self) -> float:
        return time.time()

    def on_advance(self, callback: Callable[[], None]) -> None:
        return None

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def wait(self, cond: threading.Condition, timeout_s: float | None) -> None:
        cond.wait(timeout_s)


class ManualClock:
    """A clock that moves only when a test calls `advance` or `set`."""

    def __init__(self, start: float = 1_800_000_000.0):
        self._now = start
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._sleepers: list[
            tuple[float, int, asyncio.AbstractEventLoop, asyncio.Future[None]]
        ] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def on_advance(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(callback)

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)

    def set(self, when: float) -> None:
        with self._lock:
            self._now = max(self._now, when)
            due = []
            while self._sleepers and self._sleepers[0][0] <= self._now:
                due.append(heapq.heappop(self._sleepers))
            listeners = list(self._listeners)
        for _, _, loop, fut in due:
            if fut.done() or loop.is_closed():
                continue  # a cancelled sleeper, or one whose loop is gone
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_resolve, fut)
        for callback in listeners:
            callback()

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            deadline = self._now + max(0.0, seconds)
            if deadline <= self._now:
                fut.set_result(None)
            else:
                heapq.heappush(self._sleepers, (deadline, next(self._seq), loop, fut))
        await fut

    def wait(self, cond: threading.Condition, timeout_s: float | None) -> None:
        # Time stands still until advanced; `advance` wakes waiters through on_advance.
        # The short real timeout only guards against a missed notification.
        cond.wait(0.05)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
