"""Which waiting job starts next: the dispatch policy, a pure function of the queue's state.

The waiting line (fairline.py) offers jobs by priority, round robin between users, FIFO
per user. Each provider has its own gate (pause, rate limit, cap, gates.py): a closed gate
holds back only its own jobs, and a job whose provider is paused may start on one of its
caller's fallback providers instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import msgspec

from genqueue.actors.fairline import FairLine
from genqueue.actors.gates import CLOSED, ProviderGates
from genqueue.actors.queue_records import Pending, QueueMeta

__all__ = ["Pick", "pick_next"]


class Pick(NamedTuple):
    """The job to start now (taken off the line; on the provider it runs on), and the
    provider it fell back from; or, with no job, when to look again (None: when
    something ends)."""

    entry: Pending | None
    wake: float | None = None
    fell_back_from: str | None = None


def _open_for(shut: frozenset[str], paused: frozenset[str], entry: Pending) -> bool:
    """May `entry` start now: its provider's gate is open, or that provider is paused and
    one of the caller's fallback providers is open."""
    if entry.provider not in shut:
        return True
    return entry.provider in paused and any(p not in shut for p in entry.fallback)


def pick_next(
    line: FairLine[Pending],
    gates: ProviderGates,
    meta: QueueMeta,
    now: float,
    blocked: Callable[[str], bool] | None,
) -> Pick:
    """The next job that may start now (`blocked(user_id)`: that user is at their cap)."""
    if not line:
        return Pick(None)  # an arrival dispatches again
    shut = gates.closed(meta, now)  # provider -> when it opens
    ok = None  # every gate open: the line's next job
    if shut:
        if len(shut) == len(gates.rates):  # every gate closed: nothing may start
            return _wait(shut)
        paused = {p for p in shut if gates.pause_of(meta, p)[0] > now}
        ok = functools.partial(_open_for, frozenset(shut), frozenset(paused))
    entry = line.next(blocked, ok)
    if entry is None:
        return _wait(shut)
    line.served(entry)
    if entry.provider not in shut:
        return Pick(entry)
    chosen = next(p for p in entry.fallback if p not in shut)  # its first open fallback
    return Pick(msgspec.structs.replace(entry, provider=chosen), fell_back_from=entry.provider)


def _wait(shut: dict[str, float]) -> Pick:
    """No job now: look again when the first shut gate opens (None: when something ends)."""
    wake = min(shut.values(), default=CLOSED)
    return Pick(None, None if wake == CLOSED else wake)
