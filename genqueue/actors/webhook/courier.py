"""The outbox's HTTP client and courier: attempts run on the I/O loop; their outcomes go back
to the actor in batches (one `Sent` message per batch)."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import msgspec
import pykka

from genqueue.actors.coalesce import Coalescer
from genqueue.actors.system import ActorSystem
from genqueue.actors.webhook.messages import KEY, KIND, Sent
from genqueue.config import Config
from genqueue.storage.videourls import VideoUrls
from genqueue.webhooks import (
    Delivery,
    SendOutcome,
    WebhookSigner,
    encode_event,
    parse_secrets,
    send,
)

# -- the HTTP client (lives on the I/O loop) ----------------------------------------------

__all__ = ["WebhookClient"]


class WebhookClient:
    """One aiohttp session, created lazily on the I/O loop and closed there at shutdown."""

    def __init__(self, config: Config, video_urls: VideoUrls | None = None):
        self.video_urls = video_urls
        self.url = config.webhook_target
        self.timeout_s = config.webhook_timeout_s
        secrets = parse_secrets(config.webhook_secret)
        self.signer = WebhookSigner(secrets) if secrets else None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def send(self, delivery: Delivery, now_s: float) -> SendOutcome:
        if self._closed:
            raise RuntimeError("the webhook client is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        delivery = self._with_fresh_url(delivery)
        return await send(
            self._session, self.url, delivery, self.signer, now_s=now_s, timeout_s=self.timeout_s
        )

    def _with_fresh_url(self, delivery: Delivery) -> Delivery:
        """The attempt carries a freshly signed video URL (same webhook-id, new body)."""
        result = delivery.event.result
        if not delivery.signed_video or result is None or self.video_urls is None:
            return delivery
        fresh = msgspec.structs.replace(result, video_url=self.video_urls.sign(result.video_url))
        event = msgspec.structs.replace(delivery.event, result=fresh)
        return msgspec.structs.replace(delivery, event=event, body=encode_event(event))

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


# -- the courier (attempts on the I/O loop, outcomes back in batches) ---------------------------

_Done = tuple[str, int, SendOutcome]  # generation id, seq, what the attempt came to


class _Courier:
    """Runs attempts on the I/O loop; hands their outcomes to the actor in batches.

    An outcome is appended to a list; only the first one into an empty list sends the
    actor a `Sent`, whose turn takes them all. Shared by the actor's instances (it lives
    on the WebhookOutbox), so an outcome that outlives an instance reaches the next one.
    """

    def __init__(self, system: ActorSystem, client: WebhookClient):
        self.system = system
        self.client = client
        self._done: Coalescer[_Done] = Coalescer(self._wake)
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, batch: list[tuple[Delivery, float]]) -> None:
        """From the actor's thread: attempt each (delivery, now) on the loop."""
        loop = self.system.loop
        if loop is None:
            raise RuntimeError("the actor system has no I/O loop")
        loop.call_soon_threadsafe(self._start, batch)

    def _start(self, batch: list[tuple[Delivery, float]]) -> None:
        loop = asyncio.get_running_loop()
        for delivery, now in batch:
            task = loop.create_task(self._attempt(delivery, now))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _attempt(self, delivery: Delivery, now: float) -> None:
        try:
            outcome = await self.client.send(delivery, now)
        except asyncio.CancelledError:
            raise  # shutting down: the delivery stays pending in the store
        except Exception as exc:  # send() classifies network errors; this is anything else
            outcome = SendOutcome(
                ok=False, status=None, retryable=True, error=repr(exc), duration_ms=0.0
            )
        with contextlib.suppress(pykka.ActorDeadError):  # the system stopped meanwhile
            self._done.put((delivery.stream, delivery.seq, outcome))

    def _wake(self) -> None:
        self.system.tell(self.system.kind_of(KIND), KEY, Sent())

    def take(self) -> list[_Done]:
        return self._done.take()

    def cancel(self) -> None:
        """On the loop: stop the attempts under way (their deliveries stay pending)."""
        for task in list(self._tasks):
            task.cancel()
