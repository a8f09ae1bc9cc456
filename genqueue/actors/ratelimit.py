"""The provider's rate limit: a bucket of N tokens, each returning 60 s after it is spent.

That is a sliding window: in any 60 s, at most N starts, never 2N at a minute's edge
(which a refill-rate bucket allows). Pure: time is passed in.
"""

from __future__ import annotations

from collections import deque

__all__ = ["RateWindow"]

WINDOW_S = 60.0


class RateWindow:
    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._spent: deque[float] = deque()

    def load(self, spent: list[float]) -> None:
        self._spent = deque(sorted(spent)[-self.per_minute :] if self.per_minute else [])

    def snapshot(self) -> list[float]:
        return list(self._spent)

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0] <= now - WINDOW_S:
            self._spent.popleft()

    def next_token_at(self, now: float) -> float:
        """`now` if a token is free, else when the oldest spent token returns."""
        if not self.per_minute:
            return now
        self._expire(now)
        if len(self._spent) < self.per_minute:
            return now
        return self._spent[0] + WINDOW_S

    def spend(self, now: float) -> None:
        if self.per_minute:
            self._spent.append(now)
