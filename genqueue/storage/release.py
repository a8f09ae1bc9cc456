"""The state store's releaser: the thread that runs after-commit callbacks, off the committer.

The committer hands each commit's due callbacks over as one group and goes on with the
next commit at once. Groups run in the order handed over, each inside the release context
(the actor system uses it to send what a group of turns sends together). A callback that
raises is logged, and the rest of its group still runs.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

__all__ = ["Releaser"]

log = logging.getLogger("genqueue.state")


class Releaser:
    """Runs groups of callbacks on the `state-releaser` thread, in the order handed over."""

    def __init__(self, lock: threading.Condition) -> None:
        self._lock = lock  # the store's: `pending` changes under it
        self.pending = 0
        """Groups handed over and not yet run (read with the lock held)."""
        self.context: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
        self._groups: queue.Queue[list[Callable[[], None]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="state-releaser", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def hand_over(self, group: list[Callable[[], None]]) -> None:
        """Queue `group` to run after the groups before it (lock held)."""
        self.pending += 1
        self._groups.put(group)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Run the groups handed over, then end the thread."""
        self._groups.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _loop(self) -> None:
        while True:
            group = self._groups.get()
            if group is None:
                return
            try:
                with self.context():
                    for callback in group:
                        try:
                            callback()
                        except Exception:
                            log.exception("an after-commit callback failed")
            except Exception:
                log.exception("releasing after-commit callbacks failed")
            with self._lock:
                self.pending -= 1
