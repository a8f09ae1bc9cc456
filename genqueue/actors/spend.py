"""What the queue's jobs cost: spend committed (per provider, per user and UTC day, in
total) and spend in flight (each job not ended yet, at one paid start), and the per-user
daily budget checked at submit against both.

Committed spend is what a job's paid starts cost (the GenerationActor counts them in the
job's checkpoint: a start that Google says was not charged is taken back), added when the
job ends. It is kept in the QueueActor's meta, so it survives restarts. Spend in flight is
each waiting or running job's price of one start, rebuilt at activation from the stored
`pending/` entries (a job waiting for a retry is counted again once it is requeued).
"""

from __future__ import annotations

import functools
import time
from typing import Any

from genqueue.errors import BudgetExceeded

__all__ = ["SpendBook", "day_of"]


def day_of(now: float) -> str:
    """The UTC day of `now`, as "YYYY-MM-DD"."""
    return _day(int(now // 86400))


@functools.lru_cache(maxsize=4)
def _day(days: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(days * 86400))


class SpendBook:
    """Spend, over the QueueActor's stored `committed` dict (its meta) and its in-flight map."""

    def __init__(self, committed: dict[str, float]):
        self.committed = committed  # "total", "provider/{p}", "user/{u}/{day}"
        self.reserved: dict[str, tuple[str, float]] = {}  # job id -> (user, one start's cost)

    def reserve(self, job_id: str, user_id: str, cost: float) -> None:
        if cost > 0:
            self.reserved[job_id] = (user_id, cost)

    def reserved_cost(self, job_id: str) -> float:
        return self.reserved.get(job_id, ("", 0.0))[1]

    def release(self, job_id: str) -> None:
        self.reserved.pop(job_id, None)

    def charge(self, user_id: str, provider: str, cost: float, now: float) -> None:
        if cost <= 0:
            return
        today = day_of(now)
        mine = f"user/{user_id}/{today}"
        fresh = mine not in self.committed  # the user's first charge today
        for key in ("total", f"provider/{provider}", mine):
            self.committed[key] = round(self.committed.get(key, 0.0) + cost, 6)
        if fresh:  # keep only today's and yesterday's per-user figures (a budget is per day)
            keep = {today, day_of(now - 86400)}
            for key in [k for k in self.committed if k.startswith("user/")]:
                if key.rsplit("/", 1)[1] not in keep:
                    del self.committed[key]

    def in_flight(self, user_id: str) -> float:
        return sum(cost for user, cost in self.reserved.values() if user == user_id)

    def check(self, user_id: str, cost: float, budget: float, now: float) -> None:
        """BudgetExceeded if this submission would take the user past `budget` today."""
        if budget <= 0:
            return
        today = self.committed.get(f"user/{user_id}/{day_of(now)}", 0.0)
        pending = self.in_flight(user_id)
        if today + pending + cost > budget + 1e-9:
            raise BudgetExceeded(
                f"user {user_id} has spent {today:.2f} today with {pending:.2f} in flight; "
                f"this job ({cost:.2f}) would pass the daily budget of {budget:.2f}",
                limit=int(budget),
                user=True,
            )

    def as_status(self, now: float) -> dict[str, Any]:
        today = day_of(now)
        users: dict[str, float] = {}
        for key, value in self.committed.items():
            if key.startswith("user/") and key.endswith(f"/{today}"):
                users[key.split("/")[1]] = value
        by_provider = {
            k.removeprefix("provider/"): v
            for k, v in self.committed.items()
            if k.startswith("provider/")
        }
        return {
            "total": self.committed.get("total", 0.0),
            "byProvider": by_provider,
            "byUserToday": users,
            "inFlight": round(sum(cost for _, cost in self.reserved.values()), 6),
        }
