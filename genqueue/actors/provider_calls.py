"""ProviderCalls: the calls a GenerationActor makes to its provider, counted and retried.

A call (start, poll, download) that fails transiently (429, 5xx, a timeout, a reset) is
made again under the provider's RetryPolicy (`Config.provider_retry`), after the delay the
provider asked for (Retry-After, RetryInfo) or else the policy's. Every call is counted for
the plan's API metrics: calls per minute, errors, rate-limit hits.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from genqueue.clock import Clock
from genqueue.errors import ProviderError
from genqueue.retry import RetryPolicy

__all__ = ["NOT_RETRIED_HERE", "ProviderCalls"]

log = logging.getLogger("genqueue.generation")
T = TypeVar("T")

# Outcomes of an operation (a new operation is the retry) and the per-day quota (the queue
# pauses; the job waits without spending an attempt): never retried by re-sending the call.
NOT_RETRIED_HERE = frozenset({"operation_error", "audio_blocked", "quota_exhausted"})


class ProviderCalls:
    """`await calls.run("poll", fn)`: `fn()`, again on transient errors, counted."""

    def __init__(self, clock: Clock, retry: RetryPolicy):
        self.clock = clock
        self.retry = retry
        self.counts: dict[str, int] = {"start": 0, "poll": 0, "download": 0, "errors": 0}
        self.rate_limited = 0  # 429 answers
        self._recent: deque[float] = deque()  # times of calls in the last minute

    async def run(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Transient errors (429, 5xx, timeouts) retry with backoff, honouring Retry-After."""
        failed = 0
        while True:
            self._count(what)
            try:
                return await call()
            except ProviderError as exc:
                self.counts["errors"] += 1
                if exc.status == 429:
                    self.rate_limited += 1
                failed += 1
                if not exc.retryable or exc.code in NOT_RETRIED_HERE or self.retry.gives_up(failed):
                    raise
                delay = exc.retry_after_s or self.retry.delay_s(failed)
                log.warning(
                    f"veo {what} failed, retrying",
                    extra={"error": exc.message, "status": exc.status, "retry_in_s": delay},
                )
                await self.clock.sleep(delay)

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        now = self.clock.now()
        self._recent.append(now)
        while self._recent and self._recent[0] < now - 60:
            self._recent.popleft()

    def stats(self) -> dict[str, Any]:
        """The plan's API metrics: calls per minute, errors, rate-limit hits."""
        now = self.clock.now()
        per_minute = sum(1 for t in list(self._recent) if t >= now - 60)
        return {
            "calls": self.counts["start"] + self.counts["poll"] + self.counts["download"],
            "callsPerMinute": per_minute,
            "starts": self.counts["start"],
            "polls": self.counts["poll"],
            "downloads": self.counts["download"],
            "errors": self.counts["errors"],
            "rateLimited": self.rate_limited,
        }
