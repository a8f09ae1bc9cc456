"""The queue's watchdog: which jobs in flight are past their deadline, and when to look next.

A job in flight longer than `job_watchdog_s` (counted from its start, or from the queue's
activation if that came later) is told `TimedOut`, and told again each `job_watchdog_s`
while it stays in flight, in case the notice was lost (a crashed turn, a store failure).
Pure bookkeeping: the QueueActor sends the notices.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from genqueue.actors.queue_records import InFlight

__all__ = ["Watchdog"]

log = logging.getLogger("genqueue.queue")


class Watchdog:
    """Deadlines of the jobs in flight (`in_flight` is in start order = deadline order)."""

    def __init__(self, job_watchdog_s: float, activated_at: float):
        self.job_watchdog_s = job_watchdog_s
        self.activated_at = activated_at
        self.told: dict[str, float] = {}  # timed out (when told), not finished yet

    def finished(self, job_id: str) -> None:
        self.told.pop(job_id, None)

    def deadline(self, flight: InFlight) -> float:
        return max(flight.started_at, self.activated_at) + self.job_watchdog_s

    def next_deadline(self, in_flight: Mapping[str, InFlight]) -> float | None:
        """The deadline of the oldest job in flight not yet told, or the time to tell a
        told one again, whichever comes first."""
        first = None
        for job_id, flight in in_flight.items():
            if job_id not in self.told:
                first = self.deadline(flight)
                break
        again = min(self.told.values(), default=None)
        if again is not None:
            again += self.job_watchdog_s
            first = again if first is None else min(first, again)
        return first

    def due(self, in_flight: Mapping[str, InFlight], now: float) -> list[str]:
        """The jobs to tell `TimedOut` now (each is then counted as told at `now`)."""
        due: list[str] = []
        for job_id, told in list(self.told.items()):
            if told + self.job_watchdog_s <= now:
                log.warning("job %s still in flight after its timeout notice", job_id)
                self.told[job_id] = now
                due.append(job_id)
        for job_id, flight in in_flight.items():
            if job_id in self.told:
                continue
            if self.deadline(flight) > now:
                break
            self.told[job_id] = now
            due.append(job_id)
        return due
