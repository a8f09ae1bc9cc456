"""What the webhook outbox tells its readers: its counters and pages of dead letters."""

from __future__ import annotations

from typing import Any

import msgspec

from genqueue.webhooks.payload import Delivery

__all__ = ["DeadLetters", "WebhookStats"]


class DeadLetters(msgspec.Struct, frozen=True):
    """A page of dead-lettered deliveries; `next_after` continues it (None: the end)."""

    deliveries: list[Delivery]
    next_after: str | None = None


class WebhookStats(msgspec.Struct, frozen=True, rename="camel"):
    """Counters for the status endpoint. `dead` counts dead-letterings ever;
    `dead_letters` is how many are stored now (replay takes one out)."""

    sent: int = 0
    failed_attempts: int = 0
    retries: int = 0
    dead: int = 0
    dead_letters: int = 0
    pending: int = 0
    in_flight: int = 0
    oldest_pending_age_s: float | None = None

    def as_status(self) -> dict[str, Any]:
        """The `webhooks` figures of QueueStatus: `{sent, failedAttempts, ...}`."""
        figures: dict[str, Any] = msgspec.to_builtins(self)
        return figures
