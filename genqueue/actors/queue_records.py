"""What the QueueActor stores (see queue.py for the keys): pending entries, in-flight
bookkeeping and its meta record. Stored records evolve by adding fields with defaults."""

from __future__ import annotations

import msgspec

__all__ = ["InFlight", "Pending", "QueueMeta", "pending_key"]


class Pending(msgspec.Struct, frozen=True):
    """A job the queue holds: waiting, or in flight since `started_at`."""

    job_id: str
    user_id: str
    priority: int
    seq: int
    enqueued_at: float
    started_at: float | None = None


class InFlight(msgspec.Struct, frozen=True):
    """A job in flight (in memory; stored as its Pending entry with `started_at`)."""

    user_id: str
    started_at: float
    key: str = ""  # its stored entry


class QueueMeta(msgspec.Struct):
    next_seq: int = 1
    paused_until: float = 0.0
    pause_reason: str = ""
    spent_tokens: list[float] = msgspec.field(default_factory=list)
    next_retention_at: float = 0.0
    counters: dict[str, int] = msgspec.field(default_factory=dict)
    # the fair line's turn pointers: priority -> the user served last at it
    turns: dict[str, str] = msgspec.field(default_factory=dict)


def pending_key(priority: int, seq: int) -> str:
    return f"pending/{10 - priority:02d}/{seq:016d}"
