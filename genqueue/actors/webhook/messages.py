"""The webhook outbox's address, constants and messages (frozen, tagged)."""

from __future__ import annotations

import msgspec

from genqueue.actors.services import WEBHOOK_OUTBOX
from genqueue.webhooks import (
    EventName,
)

KIND, KEY = WEBHOOK_OUTBOX
MAX_IN_FLIGHT = 64
TERMINAL_SEQ = 9_999_999  # a job's terminal event comes after all of its others
_TERMINAL_EVENTS: dict[str, EventName] = {
    "completed": "generation.completed",
    "failed": "generation.failed",
    "cancelled": "generation.cancelled",
}

__all__ = [
    "KEY",
    "KIND",
    "MAX_IN_FLIGHT",
    "TERMINAL_SEQ",
    "Fresh",
    "GetWebhookStats",
    "PageDead",
    "Replay",
    "Sent",
    "Wake",
]


# -- messages (frozen, tagged) ------------------------------------------------------------


class Wake(msgspec.Struct, frozen=True, tag=True):
    """New deliveries were stored (for `job_id`, or possibly any job when None)."""

    job_id: str | None = None


class Fresh(msgspec.Struct, frozen=True, tag=True):
    """Committed job turns stored events: take them from the outbox's hand-off list."""


class Sent(msgspec.Struct, frozen=True, tag=True):
    """Attempts ended: take their outcomes from the courier."""


class GetWebhookStats(msgspec.Struct, frozen=True, tag=True):
    """Ask for the counters (a WebhookStats)."""


class PageDead(msgspec.Struct, frozen=True, tag=True):
    """Ask for up to `limit` dead-lettered deliveries after the cursor `after` (a DeadLetters),
    in generation id order, then each generation's events in order."""

    limit: int
    after: str | None = None


class Replay(msgspec.Struct, frozen=True, tag=True):
    """Send a dead-lettered delivery again (same webhook-id, a fresh schedule)."""

    delivery_id: str
