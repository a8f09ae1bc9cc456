"""`JobQueue.webhooks`: the webhook outbox as callers see it (counters, dead letters, replay)."""

from __future__ import annotations

from collections.abc import Callable

from genqueue.actors.webhook import WebhookOutbox
from genqueue.errors import DeliveryNotFound
from genqueue.webhooks import DeadLetters, Delivery, WebhookStats

__all__ = ["Webhooks"]


class Webhooks:
    """The outbox of an open queue (with no webhook target: zero counters, no dead letters)."""

    def __init__(self, outbox: Callable[[], WebhookOutbox | None]):
        self._outbox = outbox  # the current one: `reopen` replaces it

    def stats(self) -> WebhookStats:
        outbox = self._outbox()
        return outbox.stats() if outbox is not None else WebhookStats()

    async def astats(self) -> WebhookStats:
        outbox = self._outbox()
        return await outbox.astats() if outbox is not None else WebhookStats()

    def dead(self, limit: int = 100, after: str | None = None) -> DeadLetters:
        """A page of dead-lettered deliveries (kept until replayed), in job order; pass
        `next_after` as `after` for the next page."""
        outbox = self._outbox()
        return outbox.page_dead(limit, after) if outbox is not None else DeadLetters([])

    async def adead(self, limit: int = 100, after: str | None = None) -> DeadLetters:
        outbox = self._outbox()
        return await outbox.apage_dead(limit, after) if outbox is not None else DeadLetters([])

    def replay(self, delivery_id: str) -> Delivery:
        """Send a dead-lettered delivery again, with the same webhook-id. DeliveryNotFound for
        an unknown id (or no webhook target), DeliveryNotDead for one still pending."""
        return self._require().replay(delivery_id)

    async def areplay(self, delivery_id: str) -> Delivery:
        return await self._require().areplay(delivery_id)

    def _require(self) -> WebhookOutbox:
        outbox = self._outbox()
        if outbox is None:
            raise DeliveryNotFound("no webhook target is configured")
        return outbox
