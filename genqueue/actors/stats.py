"""The plan's queue metrics: recent waits and processing times, per-minute throughput."""

from __future__ import annotations

from collections import deque
from typing import Any

from genqueue.clock import Clock
from genqueue.models import JobStatus, QueueStatus

__all__ = ["QueueStats"]

SAMPLES = 1000


def _avg(xs: deque[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _p95(xs: deque[float]) -> float | None:
    if not xs:
        return None
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


class QueueStats:
    """In-memory rolling figures (counters that must survive a restart live in QueueMeta)."""

    def __init__(self, clock: Clock):
        self._clock = clock
        self.waits: deque[float] = deque(maxlen=SAMPLES)
        self.processing: deque[float] = deque(maxlen=SAMPLES)
        self._ended: deque[tuple[float, str]] = deque()

    def started(self, wait_s: float) -> None:
        self.waits.append(max(0.0, wait_s))

    def finished(self, status: JobStatus, wait_s: float | None, processing_s: float | None) -> None:
        if processing_s is not None and status == "completed":
            self.processing.append(max(0.0, processing_s))
        self._ended.append((self._clock.now(), status))

    def _last_minute(self) -> tuple[int, int]:
        cutoff = self._clock.now() - 60
        while self._ended and self._ended[0][0] < cutoff:
            self._ended.popleft()
        done = sum(1 for _, s in self._ended if s == "completed")
        failed = sum(1 for _, s in self._ended if s == "failed")
        return done, failed

    def status(
        self, *, counters: dict[str, int], by_priority: dict[str, int], **kw: Any
    ) -> QueueStatus:
        done_pm, failed_pm = self._last_minute()
        completed = counters.get("completed", 0)
        failed = counters.get("failed", 0)
        ended = completed + failed
        attempts = ended + counters.get("retried", 0)
        return QueueStatus(
            queued_by_priority=by_priority,
            avg_wait_s=_avg(self.waits),
            p95_wait_s=_p95(self.waits),
            avg_processing_s=_avg(self.processing),
            p95_processing_s=_p95(self.processing),
            processed_per_minute=done_pm,
            failed_per_minute=failed_pm,
            submitted=counters.get("submitted", 0),
            completed=completed,
            failed=failed,
            cancelled=counters.get("cancelled", 0),
            retried=counters.get("retried", 0),
            success_rate=completed / ended if ended else None,
            failure_rate=failed / ended if ended else None,
            retry_rate=counters.get("retried", 0) / attempts if attempts else None,
            rate_limit_hits=counters.get("rate_limit_hits", 0),
            **kw,
        )
