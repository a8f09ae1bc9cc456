"""What the QueueActor stores: pending entries, in-flight bookkeeping and its meta record.
Stored records evolve by adding fields with defaults. The per-job ones are data only, so
untracked by the cyclic garbage collector (`gc=False`, as genqueue.models).

Keys (the QueueActor's own instance, "main"):
    pending/{10-priority:02}/{seq:016}  -> Pending      (by priority, then submission)
    finished/{finished_ms:015}/{job_id} -> user id      (the retention index)
    meta                                -> QueueMeta    (sequence, counters, rate window)
A job's `pending/` entry lives from its submission to its end: waiting while its
`started_at` is None, in flight once dispatched (one put at dispatch, no move to
another key). Start-up reads only these entries: finished history costs nothing."""

from __future__ import annotations

from typing import Any

import msgspec

from genqueue.actors.gates import DEFAULT_PROVIDER

__all__ = ["InFlight", "Pending", "QueueMeta", "pending_key"]


class Pending(msgspec.Struct, frozen=True, gc=False):
    """A job the queue holds: waiting, or in flight since `started_at`."""

    job_id: str
    user_id: str
    priority: int
    seq: int
    enqueued_at: float
    started_at: float | None = None
    cost: float = 0.0  # one paid start's price: the job's spend in flight
    provider: str = DEFAULT_PROVIDER
    # the caller's fallback providers, in order: taken when `provider` is paused (a 429 or
    # its quota); none after a first attempt (a retry stays where it paid)
    fallback: tuple[str, ...] = ()


class InFlight(msgspec.Struct, frozen=True, gc=False):
    """A job in flight (in memory; stored as its Pending entry with `started_at`)."""

    user_id: str
    started_at: float
    key: str = ""  # its stored entry
    provider: str = DEFAULT_PROVIDER


class QueueMeta(msgspec.Struct):
    next_seq: int = 1
    paused_until: float = 0.0
    pause_reason: str = ""
    pause_s: float = 0.0  # the length of the last pause, as set
    spent_tokens: list[float] = msgspec.field(default_factory=list)
    next_retention_at: float = 0.0
    counters: dict[str, int] = msgspec.field(default_factory=dict)
    # the fair line's turn pointers: priority -> the user served last at it
    turns: dict[str, str] = msgspec.field(default_factory=dict)
    # committed spend (genqueue.actors.spend): total, per provider, per user and day
    spend: dict[str, float] = msgspec.field(default_factory=dict)
    # providers other than Veo (genqueue.actors.gates): provider -> [until, reason], tokens
    pauses: dict[str, list[Any]] = msgspec.field(default_factory=dict)
    provider_tokens: dict[str, list[float]] = msgspec.field(default_factory=dict)


def pending_key(priority: int, seq: int) -> str:
    return f"pending/{10 - priority:02d}/{seq:016d}"
