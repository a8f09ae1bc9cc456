"""The QueueActor's jobs in flight, in memory: in start order, and how many each user has.

Start order is deadline order (the watchdog reads only the oldest untold one). The stored
form is each job's `pending/` entry with `started_at` set (queue_records.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from genqueue.actors.queue_records import InFlight

__all__ = ["Flights"]


class Flights(Mapping[str, InFlight]):
    """Job id -> InFlight, in start order, with a count per user (for `max_per_user`)."""

    def __init__(self) -> None:
        self._jobs: dict[str, InFlight] = {}
        self._per_user: dict[str, int] = {}

    def __getitem__(self, job_id: str) -> InFlight:
        return self._jobs[job_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job_id: str, flight: InFlight) -> None:
        self._jobs[job_id] = flight
        self._per_user[flight.user_id] = self._per_user.get(flight.user_id, 0) + 1

    def end(self, job_id: str, user_id: str) -> InFlight | None:
        """The job left flight (None: it was not in flight, e.g. a repeated report)."""
        flight = self._jobs.pop(job_id, None)
        if flight is None:
            return None
        left = self._per_user.get(user_id, 1) - 1
        if left > 0:
            self._per_user[user_id] = left
        else:
            self._per_user.pop(user_id, None)
        return flight

    def of_user(self, user_id: str) -> int:
        return self._per_user.get(user_id, 0)
