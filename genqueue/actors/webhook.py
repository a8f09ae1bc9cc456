"""WebhookActor: the durable outbox (the plan's sendWebhookToNextJS, with its TODO done).

A job's event is stored by `record_event` in the JobActor's own turn (same commit as the
job's new record), then the singleton WebhookActor sends it, signed, and retries it on
its alarm until a 2xx or the last attempt; then it is dead-lettered: kept, counted,
listed and replayable with the same `webhook-id`.

Keys in the `webhook` table (all under the actor's key, `main/`):
- `p/{job_id}/{seq:07d}`: a pending Delivery. Per job, keys sort in event order, and
  only a job's first pending delivery is ever sent (events of one job stay in order).
- `d/{job_id}/{seq:07d}`: a dead-lettered Delivery.
- `stats`: the persisted counters. Delivered events are deleted (only counted), so
  start-up reads pending deliveries only.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import logging
import random
from typing import Any

import aiohttp
import msgspec

from genqueue.actors.bridge import Outcome
from genqueue.actors.runtime import ActorSystem, AlarmInfo, DurableActor
from genqueue.clock import Clock
from genqueue.config import Config
from genqueue.errors import GenqueueError
from genqueue.models import Job
from genqueue.storage.state import StateStore
from genqueue.webhooks import (
    Delivery,
    EventName,
    RetrySchedule,
    SendOutcome,
    WebhookEvent,
    WebhookResult,
    WebhookSigner,
    iso_timestamp,
    new_delivery,
    parse_retry_s,
    parse_secrets,
    send,
)

__all__ = [
    "DeliveryNotFound",
    "GetWebhookStats",
    "ListDead",
    "Replay",
    "Wake",
    "WebhookActor",
    "WebhookClient",
    "WebhookOutbox",
    "WebhookStats",
    "event_seq",
    "record_event",
]

log = logging.getLogger("genqueue.webhook")

KIND = "webhook"
KEY = "main"
MAX_IN_FLIGHT = 64
TERMINAL_SEQ = 9_999_999  # a job's terminal event comes after all of its others
_TERMINAL_EVENTS: dict[str, EventName] = {
    "completed": "generation.completed",
    "failed": "generation.failed",
    "cancelled": "generation.cancelled",
}


class DeliveryNotFound(GenqueueError):
    """No dead-lettered webhook delivery has this id."""


# -- messages (frozen, tagged) ------------------------------------------------------------


class Wake(msgspec.Struct, frozen=True, tag=True):
    """New deliveries were stored (for `job_id`, or possibly any job when None)."""

    job_id: str | None = None


class GetWebhookStats(msgspec.Struct, frozen=True, tag=True):
    """Ask for the counters (a WebhookStats)."""


class ListDead(msgspec.Struct, frozen=True, tag=True):
    """Ask for the dead-lettered deliveries, oldest job event first."""


class Replay(msgspec.Struct, frozen=True, tag=True):
    """Send a dead-lettered delivery again (same webhook-id, a fresh schedule)."""

    delivery_id: str


class WebhookStats(msgspec.Struct, frozen=True):
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


class _Counters(msgspec.Struct):
    """The persisted part of WebhookStats (new fields get defaults)."""

    sent: int = 0
    failed_attempts: int = 0
    retries: int = 0
    dead: int = 0
    dead_letters: int = 0


# -- recording an event (in the JobActor's turn) ------------------------------------------


def event_seq(job: Job, *, progress_event: bool = False) -> int | None:
    """The per-job sequence number of the event `job`'s new state raises, or None.

    Derived from the state, so a turn re-run after a crash gives the same webhook-id.
    """
    if job.status in _TERMINAL_EVENTS:
        return TERMINAL_SEQ
    if job.status == "processing":
        return job.attempts * 1000 + (1 + job.progress if progress_event else 0)
    return None


def _event_name(job: Job, config: Config, progress_event: bool) -> EventName | None:
    name = _TERMINAL_EVENTS.get(job.status)
    if name is not None:
        return name
    if job.status != "processing":
        return None
    if progress_event:
        return "generation.progress" if config.webhook_events_progress else None
    return "generation.started" if config.webhook_events_started else None


def _event(job: Job, name: EventName, now_s: float) -> WebhookEvent:
    result = None
    if job.result is not None:
        processing = job.result.processing_time
        if processing is None and job.finished_at is not None and job.started_at is not None:
            processing = job.finished_at - job.started_at
        result = WebhookResult(job.result.video_url, job.result.duration, processing)
    return WebhookEvent(
        event=name,
        job_id=job.id,
        generation_id=job.generation_id,
        user_id=job.user_id,
        status=job.status,
        timestamp=iso_timestamp(now_s),
        result=result,
        error=job.error if job.status in ("failed", "cancelled") else None,
        progress=job.progress if name == "generation.progress" else None,
    )


def pending_key(job_id: str, seq: int) -> str:
    return f"p/{job_id}/{seq:07d}"


def dead_key(job_id: str, seq: int) -> str:
    return f"d/{job_id}/{seq:07d}"


def record_event(
    store: StateStore, job: Job, config: Config, clock: Clock, *, progress_event: bool = False
) -> int | None:
    """Store the Delivery for `job`'s new state, if it raises an enabled event.

    Called inside the JobActor's turn; returns the write's sequence number (for the gate).
    """
    name = _event_name(job, config, progress_event)
    seq = event_seq(job, progress_event=progress_event)
    if name is None or seq is None:
        return None
    now = clock.now()
    delivery = new_delivery(_event(job, name, now), seq=seq, now_s=now)
    return store.namespace(KIND).put(f"{KEY}/{pending_key(job.id, seq)}", delivery)


# -- the HTTP client (lives on the I/O loop) ----------------------------------------------


class WebhookClient:
    """One aiohttp session, created lazily on the I/O loop and closed there at shutdown."""

    def __init__(self, config: Config):
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
        return await send(
            self._session, self.url, delivery, self.signer, now_s=now_s, timeout_s=self.timeout_s
        )

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


# -- the actor ---------------------------------------------------------------------------------


class WebhookActor(DurableActor):
    """The singleton outbox: sends due deliveries, retries on its alarm, dead-letters."""

    kind = KIND
    passivate_when_idle = False

    def __init__(self, system: ActorSystem, key: str):
        super().__init__(system, key)
        outbox = system.services.extra["webhooks"]  # type: ignore[attr-defined]
        assert isinstance(outbox, WebhookOutbox)
        self.client = outbox.client
        self.schedule: RetrySchedule = parse_retry_s(outbox.config.webhook_retry_s)
        self.rng = random.Random(outbox.seed)
        self.counters = _Counters()
        self.pending: dict[str, list[Delivery]] = {}  # job id -> its deliveries, by seq
        self.in_flight: dict[str, int] = {}  # job id -> seq being sent
        self._due: list[tuple[float, str, int]] = []  # heap of (at, job id, seq) heads

    def activate(self) -> None:
        self.counters = self.storage.get("stats", _Counters) or _Counters()
        for _, delivery in self.storage.list("p/", Delivery):
            self._add(delivery)

    def busy(self) -> bool:
        return bool(self.in_flight) or super().busy()

    # -- messages -------------------------------------------------------------------------

    def receive(self, message: Any) -> Any:
        match message:
            case Wake(job_id=job_id):
                prefix = f"p/{job_id}/" if job_id is not None else "p/"
                for _, delivery in self.storage.list(prefix, Delivery):
                    self._add(delivery)
                self._pump()
                return None
            case GetWebhookStats():
                return self._stats()
            case ListDead():
                return [d for _, d in self.storage.list("d/", Delivery)]
            case Replay(delivery_id=delivery_id):
                return self._replay(delivery_id)
        raise TypeError(f"WebhookActor cannot handle {message!r}")

    def alarm(self, info: AlarmInfo) -> None:
        self._pump()

    # -- the pending set ----------------------------------------------------------------------

    def _add(self, delivery: Delivery) -> None:
        """Know about `delivery` (ignored if already known); make it due if it is a head."""
        queue = self.pending.setdefault(delivery.job_id, [])
        seqs = [d.seq for d in queue]
        i = bisect.bisect_left(seqs, delivery.seq)
        if i < len(queue) and queue[i].seq == delivery.seq:
            return
        queue.insert(i, delivery)
        if i == 0:
            self._push(delivery)

    def _push(self, delivery: Delivery) -> None:
        heapq.heappush(self._due, (delivery.next_attempt_at, delivery.job_id, delivery.seq))

    def _head(self, job_id: str) -> Delivery | None:
        queue = self.pending.get(job_id)
        return queue[0] if queue else None

    def _valid(self, entry: tuple[float, str, int]) -> bool:
        at, job_id, seq = entry
        head = self._head(job_id)
        return (
            head is not None
            and head.seq == seq
            and head.next_attempt_at == at
            and job_id not in self.in_flight
        )

    def _replace(self, delivery: Delivery) -> None:
        queue = self.pending[delivery.job_id]
        for i, d in enumerate(queue):
            if d.seq == delivery.seq:
                queue[i] = delivery
                return

    def _remove(self, job_id: str, seq: int) -> None:
        queue = self.pending.get(job_id, [])
        self.pending[job_id] = queue = [d for d in queue if d.seq != seq]
        if not queue:
            del self.pending[job_id]
        elif job_id not in self.in_flight:
            self._push(queue[0])

    # -- sending ----------------------------------------------------------------------------

    def _pump(self) -> None:
        """Send every due head (up to MAX_IN_FLIGHT); set the alarm for the next one."""
        now = self.clock.now()
        while self._due and len(self.in_flight) < MAX_IN_FLIGHT:
            entry = self._due[0]
            if not self._valid(entry):
                heapq.heappop(self._due)
                continue
            if entry[0] > now:
                break
            heapq.heappop(self._due)
            head = self._head(entry[1])
            assert head is not None
            self._dispatch(head, now)
        while self._due and not self._valid(self._due[0]):
            heapq.heappop(self._due)
        if self._due and self._due[0][0] > now:
            self.set_alarm(self._due[0][0])
        else:
            self.delete_alarm()  # nothing waits, or an outcome will pump again

    def _dispatch(self, delivery: Delivery, now: float) -> None:
        self.in_flight[delivery.job_id] = delivery.seq
        job_id, seq = delivery.job_id, delivery.seq

        def done(outcome: Outcome) -> None:
            self._on_outcome(job_id, seq, outcome)

        self.run_async(self.client.send(delivery, now), done)

    def _on_outcome(self, job_id: str, seq: int, outcome: Outcome) -> None:
        self.in_flight.pop(job_id, None)
        delivery = next((d for d in self.pending.get(job_id, []) if d.seq == seq), None)
        if delivery is None or outcome.cancelled:  # shutting down: it stays pending
            self._pump()
            return
        result: SendOutcome = (
            outcome.value
            if outcome.error is None
            else SendOutcome(
                ok=False, status=None, retryable=True, error=repr(outcome.error), duration_ms=0.0
            )
        )
        now = self.clock.now()
        sent = msgspec.structs.replace(
            delivery,
            attempts=delivery.attempts + 1,
            last_status=result.status,
            last_error=result.error,
        )
        if result.ok:
            self._delivered(sent, now)
        else:
            self.counters.failed_attempts += 1
            delay = (
                self.schedule.delay_before(sent.attempts, self.rng) if result.retryable else None
            )
            if delay is None:
                self._dead(sent)
            else:
                self._retry(sent, now + delay)
        self.storage.put("stats", self.counters)
        self._pump()

    def _delivered(self, delivery: Delivery, now: float) -> None:
        self.counters.sent += 1
        self.storage.delete(pending_key(delivery.job_id, delivery.seq))
        self._remove(delivery.job_id, delivery.seq)
        log.info(
            "webhook delivered",
            extra={
                "job_id": delivery.job_id,
                "webhook_id": delivery.id,
                "attempts": delivery.attempts,
                "age_s": now - delivery.created_at,
            },
        )

    def _retry(self, delivery: Delivery, at: float) -> None:
        self.counters.retries += 1
        retry = msgspec.structs.replace(delivery, next_attempt_at=at)
        self.storage.put(pending_key(delivery.job_id, delivery.seq), retry)
        self._replace(retry)
        self._push(retry)
        log.warning(
            "webhook attempt failed; will retry",
            extra={
                "job_id": delivery.job_id,
                "webhook_id": delivery.id,
                "attempts": delivery.attempts,
                "error": delivery.last_error,
            },
        )

    def _dead(self, delivery: Delivery) -> None:
        self.counters.dead += 1
        self.counters.dead_letters += 1
        dead = msgspec.structs.replace(delivery, state="dead")
        self.storage.delete(pending_key(delivery.job_id, delivery.seq))
        self.storage.put(dead_key(delivery.job_id, delivery.seq), dead)
        self._remove(delivery.job_id, delivery.seq)
        log.error(
            "webhook dead-lettered",
            extra={
                "job_id": delivery.job_id,
                "webhook_id": delivery.id,
                "attempts": delivery.attempts,
                "error": delivery.last_error,
            },
        )

    # -- inspection and replay -------------------------------------------------------------

    def _stats(self) -> WebhookStats:
        created = [d.created_at for q in self.pending.values() for d in q]
        c = self.counters
        return WebhookStats(
            sent=c.sent,
            failed_attempts=c.failed_attempts,
            retries=c.retries,
            dead=c.dead,
            dead_letters=c.dead_letters,
            pending=len(created),
            in_flight=len(self.in_flight),
            oldest_pending_age_s=self.clock.now() - min(created) if created else None,
        )

    def _replay(self, delivery_id: str) -> Delivery:
        found = [d for _, d in self.storage.list("d/", Delivery) if d.id == delivery_id]
        if not found:
            raise DeliveryNotFound(f"no dead-lettered webhook delivery {delivery_id}")
        dead = found[0]
        now = self.clock.now()
        again = msgspec.structs.replace(
            dead,
            state="pending",
            attempts=0,
            next_attempt_at=now,
            last_status=None,
            last_error=None,
        )
        self.storage.delete(dead_key(dead.job_id, dead.seq))
        self.storage.put(pending_key(again.job_id, again.seq), again)
        self.counters.dead_letters = max(0, self.counters.dead_letters - 1)
        self.storage.put("stats", self.counters)
        self._add(again)
        self._pump()
        return again


# -- the queue's side ----------------------------------------------------------------------------


class WebhookOutbox:
    """What JobQueue wires in: records events, wakes the actor, closes the client."""

    def __init__(self, system: ActorSystem, config: Config, *, seed: int | None = None):
        self.system = system
        self.config = config
        self.seed = seed
        self.client = WebhookClient(config)
        system.store.namespace(KIND)  # create the table now: a first use flushes
        system.services.extra["webhooks"] = self  # type: ignore[attr-defined]
        system.register(WebhookActor)

    def on_event(self, job: Job, progress_event: bool = False) -> int | None:
        """QueueServices.on_event: store the job's event in its own turn."""
        return record_event(
            self.system.store, job, self.config, self.system.clock, progress_event=progress_event
        )

    def published(self, job: Job) -> None:
        """After the job's turn committed: wake the actor if that turn stored an event."""
        progress = self.config.webhook_events_progress and job.status == "processing"
        if progress or _event_name(job, self.config, False) is not None:
            self.system.tell(WebhookActor, KEY, Wake(job.id))

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
            loop.create_task(self.client.close())
            return
        asyncio.run_coroutine_threadsafe(self.client.close(), loop).result(timeout_s)

    def stats(self) -> WebhookStats:
        result: WebhookStats = self.system.ask(WebhookActor, KEY, GetWebhookStats())
        return result

    async def astats(self) -> WebhookStats:
        result: WebhookStats = await self.system.ask_async(WebhookActor, KEY, GetWebhookStats())
        return result

    def dead(self) -> list[Delivery]:
        result: list[Delivery] = self.system.ask(WebhookActor, KEY, ListDead())
        return result

    def replay(self, delivery_id: str) -> Delivery:
        result: Delivery = self.system.ask(WebhookActor, KEY, Replay(delivery_id))
        return result
