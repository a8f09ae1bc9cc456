"""WebhookOutbox: what JobQueue wires in (records events, wakes the actor, answers reads)."""

from __future__ import annotations

import asyncio

from genqueue.actors.coalesce import Coalescer
from genqueue.actors.system import ActorSystem
from genqueue.actors.webhook.actor import WebhookActor
from genqueue.actors.webhook.courier import WebhookClient, _Courier
from genqueue.actors.webhook.events import _event_name, record_event
from genqueue.actors.webhook.messages import (
    KEY,
    KIND,
    Fresh,
    GetWebhookStats,
    PageDead,
    Replay,
    Wake,
)
from genqueue.config import Config
from genqueue.models import Job
from genqueue.storage.videourls import VideoUrls
from genqueue.webhooks import (
    DeadLetters,
    Delivery,
    WebhookStats,
)

# -- the queue's side ----------------------------------------------------------------------------

__all__ = ["WebhookOutbox"]


class WebhookOutbox:
    """What JobQueue wires in: records events, wakes the actor, closes the client."""

    def __init__(
        self,
        system: ActorSystem,
        config: Config,
        *,
        seed: int | None = None,
        video_urls: VideoUrls | None = None,
    ):
        self.system = system
        self.config = config
        self.seed = seed
        self.client = WebhookClient(config, video_urls)
        self.courier = _Courier(system, self.client)
        # Jobs whose committed turn stored an event; the first wakes the actor (`Fresh`).
        self._fresh: Coalescer[Job] = Coalescer(self._wake)
        system.store.namespace(KIND)  # create the table now: a first use flushes
        system.register(WebhookActor)

    def on_event(self, job: Job, progress_event: bool = False) -> int | None:
        """Store the job's event in the turn that stores its change (same commit as the job)."""
        return record_event(self.system.store, job, self.config, progress_event=progress_event)

    def published(self, job: Job) -> None:
        """After the job's turn committed: hand the job to the actor if that turn may have
        stored an event (one `Fresh` message while the hand-off list is non-empty)."""
        progress = self.config.webhook_events_progress and job.status == "processing"
        if not progress and _event_name(job, self.config, False) is None:
            return
        self._fresh.put(job)

    def _wake(self) -> None:
        self.system.tell(WebhookActor, KEY, Fresh())

    def take_fresh(self) -> list[Job]:
        """The actor's side of the hand-off: every job handed over so far."""
        return self._fresh.take()

    def start(self) -> None:
        """Activate the outbox: it reads every pending delivery and sends the due ones."""
        self.system.tell(WebhookActor, KEY, Wake())

    def close_on(self, loop: asyncio.AbstractEventLoop, timeout_s: float = 10.0) -> None:
        """Close the HTTP session on the I/O loop (call after the actors have stopped)."""
        if not loop.is_running():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:  # called from the loop itself: cannot wait for it here
            self.courier.cancel()
            loop.create_task(self.client.close())
            return

        async def close() -> None:
            self.courier.cancel()
            await self.client.close()

        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout_s)

    def stats(self) -> WebhookStats:
        result: WebhookStats = self.system.ask(WebhookActor, KEY, GetWebhookStats())
        return result

    async def astats(self) -> WebhookStats:
        result: WebhookStats = await self.system.ask_async(WebhookActor, KEY, GetWebhookStats())
        return result

    def page_dead(self, limit: int, after: str | None = None) -> DeadLetters:
        result: DeadLetters = self.system.ask(WebhookActor, KEY, PageDead(limit, after))
        return result

    def replay(self, delivery_id: str) -> Delivery:
        result: Delivery = self.system.ask(WebhookActor, KEY, Replay(delivery_id))
        return result

    async def apage_dead(self, limit: int, after: str | None = None) -> DeadLetters:
        result: DeadLetters = await self.system.ask_async(WebhookActor, KEY, PageDead(limit, after))
        return result

    async def areplay(self, delivery_id: str) -> Delivery:
        result: Delivery = await self.system.ask_async(WebhookActor, KEY, Replay(delivery_id))
        return result
