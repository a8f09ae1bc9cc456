"""The coroutines durable actors start on the I/O loop (`Durable.run_async`).

Each has a token. The table knows which actor id owns which tokens (an instance that
passivates and comes back still sees its coroutines in flight), and cancels a coroutine
on the loop, or starts it cancelled if its turn's commit has not released it yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genqueue.actors.runtime import Durable

__all__ = ["TASK_CANCELLED", "Tasks"]

TASK_CANCELLED = "job cancelled"  # the message of a job's coroutine cancelled on purpose

Owner = tuple["type[Durable]", str]


class Tasks:
    """Tokens, owners and the running `asyncio.Task`s of actors' coroutines."""

    def __init__(self, lock: threading.RLock):
        self._lock = lock
        self.running: dict[int, asyncio.Task[Any]] = {}  # touched on the I/O loop only
        self.cancelled_early: set[int] = set()  # touched on the I/O loop only
        self._owned: dict[Owner, set[int]] = {}
        self._tokens = itertools.count(1)  # `next` on it is atomic: no lock

    def next_token(self) -> int:
        return next(self._tokens)

    def own(self, cls: type[Durable], key: str, token: int) -> None:
        with self._lock:
            self._owned.setdefault((cls, key), set()).add(token)

    def disown(self, cls: type[Durable], key: str, token: int) -> None:
        with self._lock:
            tokens = self._owned.get((cls, key))
            if tokens is not None:
                tokens.discard(token)
                if not tokens:
                    del self._owned[(cls, key)]

    def owned(self, cls: type[Durable], key: str) -> set[int]:
        with self._lock:
            return set(self._owned.get((cls, key), ()))

    def cancel(self, loop: asyncio.AbstractEventLoop | None, token: int) -> None:
        """Cancel on purpose: the reason (`TASK_CANCELLED`) tells a provider's client to
        cancel its paid request too, which a shutdown (`cancel_all`) must not."""
        if loop is None:
            return

        def cancel() -> None:
            task = self.running.get(token)
            if task is not None:
                task.cancel(TASK_CANCELLED)
            else:  # not started yet (it waits for its turn's commit): start it cancelled
                self.cancelled_early.add(token)

        loop.call_soon_threadsafe(cancel)

    def cancel_all(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Stop every coroutine (a shutdown): their work is resumable from storage."""
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(lambda: [t.cancel() for t in list(self.running.values())])
