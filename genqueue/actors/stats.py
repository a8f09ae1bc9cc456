"""The plan's queue metrics: recent waits and processing times, per-minute throughput."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from genqueue.clock import Clock
from genqueue.models import JobStatus, QueueStatus

if TYPE_CHECKING:
    from genqueue.actors.queue import QueueActor

__all__ = ["QueueStats", "queue_status"]

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
        self._ended: deque[tuple[float, str]] = deque()  # the last minute's ends
        self._ended_count: dict[str, int] = {}  # status -> how many of them

    def started(self, wait_s: float) -> None:
        self.waits.append(max(0.0, wait_s))

    def finished(self, status: JobStatus, wait_s: float | None, processing_s: float | None) -> None:
        if processing_s is not None and status == "completed":
            self.processing.append(max(0.0, processing_s))
        self._ended.append((self._clock.now(), status))
        self._ended_count[status] = self._ended_count.get(status, 0) + 1

    def _last_minute(self) -> tuple[int, int]:
        cutoff = self._clock.now() - 60
        ended, count = self._ended, self._ended_count
        while ended and ended[0][0] < cutoff:
            count[ended.popleft()[1]] -= 1
        return count.get("completed", 0), count.get("failed", 0)

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


def queue_status(q: QueueActor, now: float) -> QueueStatus:
    """The QueueActor's figures as `GET /api/queue/status` shows them."""
    oldest = q.line.oldest_enqueued_at()
    paused = q.meta.paused_until > now
    return q.stats.status(
        dispatch=q.cfg.dispatch,
        queued=q.depth(),
        by_priority=q.line.by_priority(),
        in_flight=len(q.in_flight),
        retry_wait=q.retry_wait,
        max_concurrency=q.cfg.max_concurrency,
        oldest_wait_s=None if oldest is None else now - oldest,
        counters=q.meta.counters,
        paused_until=q.meta.paused_until if paused else None,
        paused_reason=(q.meta.pause_reason or None) if paused else None,
        quota_pauses=q.meta.counters.get("quota_pauses", 0),
        spend=q.spend.as_status(now),
        providers=q.gates.status(q.meta, now),
    )
