"""WebhookActor: the durable outbox (the plan's sendWebhookToNextJS, with its TODO done).

A job's event is stored by `record_event` in the JobActor's own turn (same commit as the
job's new record), then the singleton WebhookActor sends it, signed, and retries it on
its alarm until a 2xx or the last attempt; then it is dead-lettered: kept, counted,
listed and replayable with the same `webhook-id`.

Keys in the `webhook` table (all under the actor's key, `main/`):
- `p/{generation_id}/{seq:07d}`: a pending Delivery. Per job, keys sort in event order,
  and only a job's first pending delivery is ever sent (events of one job stay in order).
  The generation id is unique per job record (a client id reused after retention gets a
  new one; for records of older versions it is the job id), so a reused id never meets
  the deliveries, the webhook-ids or the memory of "already sent" of its predecessor.
- `d/{generation_id}/{seq:07d}`: a dead-lettered Delivery.
- `stats`: the persisted counters. Delivered events are deleted (only counted), so
  start-up reads pending deliveries only.

Hand-offs are batched both ways, so a busy outbox takes many events and many outcomes per
turn: committed job turns append their jobs to the outbox's hand-off list (one `Fresh`
message while it is non-empty), and attempts run on the I/O loop (`_Courier`), which
appends their outcomes to a list and sends one `Sent` message while it is non-empty.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import logging
import random
from typing import Any

import aiohttp
import msgspec
import pykka

from genqueue.actors.coalesce import Coalescer
from genqueue.actors.runtime import AlarmInfo, DurableActor
from genqueue.actors.services import WEBHOOK_OUTBOX
from genqueue.actors.system import ActorSystem
from genqueue.clock import Clock
from genqueue.config import Config
from genqueue.errors import DeliveryNotDead, DeliveryNotFound
from genqueue.models import Job
from genqueue.storage.state import StateStore
from genqueue.storage.videourls import VideoUrls, private_video_key
from genqueue.webhooks import (
    DeadLetters,
    Delivery,
    EventName,
    RetrySchedule,
    SendOutcome,
    WebhookEvent,
    WebhookResult,
    WebhookSigner,
    WebhookStats,
    encode_event,
    iso_timestamp,
    new_delivery,
    parse_retry_s,
    parse_secrets,
    send,
)

__all__ = [
    "Fresh",
    "GetWebhookStats",
    "PageDead",
    "Replay",
    "Sent",
    "Wake",
    "WebhookActor",
    "WebhookClient",
    "WebhookOutbox",
    "build_delivery",
    "event_seq",
    "record_event",
]

log = logging.getLogger("genqueue.webhook")

KIND, KEY = WEBHOOK_OUTBOX
MAX_IN_FLIGHT = 64
TERMINAL_SEQ = 9_999_999  # a job's terminal event comes after all of its others
_TERMINAL_EVENTS: dict[str, EventName] = {
    "completed": "generation.completed",
    "failed": "generation.failed",
    "cancelled": "generation.cancelled",
}


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
    in job id order, then each job's events in order."""

    limit: int
    after: str | None = None


class Replay(msgspec.Struct, frozen=True, tag=True):
    """Send a dead-lettered delivery again (same webhook-id, a fresh schedule)."""

    delivery_id: str


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


def build_delivery(job: Job, config: Config, *, progress_event: bool = False) -> Delivery | None:
    """The Delivery of the event `job`'s new state raises, if it is enabled, else None.

    A function of the record alone (the event is dated by `job.updated_at`), so the
    WebhookActor rebuilds the very bytes `record_event` stored without reading them.
    """
    name = _event_name(job, config, progress_event)
    seq = event_seq(job, progress_event=progress_event)
    if name is None or seq is None:
        return None
    signed = private_video_key(job, config.storage) is not None
    event = _event(job, name, job.updated_at)
    return new_delivery(event, seq=seq, now_s=job.updated_at, signed_video=signed)


def record_event(
    store: StateStore, job: Job, config: Config, clock: Clock, *, progress_event: bool = False
) -> int | None:
    """Store the Delivery for `job`'s new state, if it raises an enabled event.

    Called inside the JobActor's turn; returns the write's sequence number (for the gate).
    `clock` is unused (the record dates the event); kept for callers.
    """
    delivery = build_delivery(job, config, progress_event=progress_event)
    if delivery is None:
        return None
    return store.namespace(KIND).put(
        f"{KEY}/{pending_key(job.generation_id, delivery.seq)}", delivery
    )


# -- the HTTP client (lives on the I/O loop) ----------------------------------------------


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
        self.system.tell(WebhookActor, KEY, Sent())

    def take(self) -> list[_Done]:
        return self._done.take()

    def cancel(self) -> None:
        """On the loop: stop the attempts under way (their deliveries stay pending)."""
        for task in list(self._tasks):
            task.cancel()


# -- the actor ---------------------------------------------------------------------------------

RECENT = 8192  # finished (delivered or dead) deliveries remembered, so a late hand-off is no resend


class WebhookActor(DurableActor):
    """The singleton outbox: sends due deliveries, retries on its alarm, dead-letters."""

    kind = KIND
    passivate_when_idle = False

    def __init__(self, system: ActorSystem, key: str):
        super().__init__(system, key)
        outbox = system.queue_services().webhooks
        if outbox is None:
            raise RuntimeError("the WebhookActor runs only with a webhook outbox configured")
        self.outbox = outbox
        self.config = outbox.config
        self.courier = outbox.courier
        self.schedule: RetrySchedule = parse_retry_s(outbox.config.webhook_retry_s)
        self.rng = random.Random(outbox.seed)
        self.counters = _Counters()
        self.pending: dict[str, list[Delivery]] = {}  # job id -> its deliveries, by seq
        self.in_flight: dict[str, int] = {}  # job id -> seq being sent
        self._due: list[tuple[float, str, int]] = []  # heap of (at, job id, seq) heads
        self._known: set[tuple[str, int]] = set()  # (job id, seq) of every pending delivery
        self._ages: list[tuple[float, str, int]] = []  # heap of (created, job id, seq), lazy
        self._recent: dict[tuple[str, int], None] = {}  # finished lately, oldest first

    def activate(self) -> None:
        self.counters = self.storage.get("stats", _Counters) or _Counters()
        for _, delivery in self.storage.list("p/", Delivery):
            self._add(delivery)

    def busy(self) -> bool:
        return bool(self.in_flight) or super().busy()

    # -- messages -------------------------------------------------------------------------

    def receive(self, message: Any) -> Any:
        match message:
            case Fresh():
                self._take_fresh()
                self._pump()
                return None
            case Sent():
                for job_id, seq, outcome in self.courier.take():
                    self._on_outcome(job_id, seq, outcome)
                self.storage.put("stats", self.counters)  # once per batch, same commit
                self._pump()
                return None
            case Wake(job_id=job_id):
                prefix = f"p/{job_id}/" if job_id is not None else "p/"
                for _, delivery in self.storage.list(prefix, Delivery):
                    self._add(delivery)
                self._pump()
                return None
            case GetWebhookStats():
                return self._stats()
            case PageDead(limit=limit, after=after):
                return self._page_dead(limit, after)
            case Replay(delivery_id=delivery_id):
                return self._replay(delivery_id)
        raise TypeError(f"WebhookActor cannot handle {message!r}")

    def alarm(self, info: AlarmInfo) -> None:
        self._pump()

    def _take_fresh(self) -> None:
        """Learn the events committed job turns stored: a terminal job's is rebuilt from
        its record (no read); a running job's (started, progress) are read from the store."""
        for job in self.outbox.take_fresh():
            delivery = build_delivery(job, self.config) if job.terminal else None
            if delivery is None:
                for _, stored in self.storage.list(f"p/{job.generation_id}/", Delivery):
                    self._add(stored)
            elif (job.generation_id, delivery.seq) not in self._recent:
                self._add(delivery)

    # -- the pending set ----------------------------------------------------------------------

    def _add(self, delivery: Delivery) -> None:
        """Know about `delivery` (ignored if already known); make it due if it is a head."""
        ident = (delivery.stream, delivery.seq)
        if ident in self._known:
            return
        queue = self.pending.setdefault(delivery.stream, [])
        i = bisect.bisect_left([d.seq for d in queue], delivery.seq)
        queue.insert(i, delivery)
        self._known.add(ident)
        self._recent.pop(ident, None)
        heapq.heappush(self._ages, (delivery.created_at, delivery.stream, delivery.seq))
        if len(self._ages) > 2 * len(self._known) + 1024:  # mostly stale entries: rebuild
            self._ages = [(d.created_at, d.stream, d.seq) for q in self.pending.values() for d in q]
            heapq.heapify(self._ages)
        if i == 0:
            self._push(delivery)

    def _push(self, delivery: Delivery) -> None:
        heapq.heappush(self._due, (delivery.next_attempt_at, delivery.stream, delivery.seq))

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
        queue = self.pending[delivery.stream]
        for i, d in enumerate(queue):
            if d.seq == delivery.seq:
                queue[i] = delivery
                return

    def _remove(self, job_id: str, seq: int) -> None:
        queue = self.pending.get(job_id, [])
        self.pending[job_id] = queue = [d for d in queue if d.seq != seq]
        self._known.discard((job_id, seq))
        self._recent[(job_id, seq)] = None
        if len(self._recent) > RECENT:
            del self._recent[next(iter(self._recent))]
        if not queue:
            del self.pending[job_id]
        elif job_id not in self.in_flight:
            self._push(queue[0])

    # -- sending ----------------------------------------------------------------------------

    def _pump(self) -> None:
        """Send every due head (up to MAX_IN_FLIGHT); set the alarm for the next one."""
        now = self.clock.now()
        batch: list[tuple[Delivery, float]] = []
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
            self.in_flight[head.stream] = head.seq
            batch.append((head, now))
        if batch:
            self.courier.start(batch)
        while self._due and not self._valid(self._due[0]):
            heapq.heappop(self._due)
        if self._due and self._due[0][0] > now:
            self.set_alarm(self._due[0][0])
        else:
            self.delete_alarm()  # nothing waits, or an outcome will pump again

    def _on_outcome(self, job_id: str, seq: int, result: SendOutcome) -> None:
        """Record one attempt's end (the caller stores the counters and pumps)."""
        if self.in_flight.get(job_id) == seq:
            del self.in_flight[job_id]
        delivery = next((d for d in self.pending.get(job_id, []) if d.seq == seq), None)
        if delivery is None:
            return
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

    def _delivered(self, delivery: Delivery, now: float) -> None:
        self.counters.sent += 1
        self.storage.delete(pending_key(delivery.stream, delivery.seq))
        self._remove(delivery.stream, delivery.seq)
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
        self.storage.put(pending_key(delivery.stream, delivery.seq), retry)
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
        self.storage.delete(pending_key(delivery.stream, delivery.seq))
        self.storage.put(dead_key(delivery.stream, delivery.seq), dead)
        self._remove(delivery.stream, delivery.seq)
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
        ages = self._ages
        while ages and (ages[0][1], ages[0][2]) not in self._known:
            heapq.heappop(ages)  # delivered or dead since it was pushed
        c = self.counters
        return WebhookStats(
            sent=c.sent,
            failed_attempts=c.failed_attempts,
            retries=c.retries,
            dead=c.dead,
            dead_letters=c.dead_letters,
            pending=len(self._known),
            in_flight=len(self.in_flight),
            oldest_pending_age_s=self.clock.now() - ages[0][0] if ages else None,
        )

    def _page_dead(self, limit: int, after: str | None) -> DeadLetters:
        start = "d/" if after is None else f"d/{after}"
        rows = self.storage.list("d/", Delivery, start=start, limit=limit + 2)
        rows = [(key[2:], d) for key, d in rows if after is None or key[2:] > after]
        page = rows[:limit]
        more = len(rows) > limit
        return DeadLetters([d for _, d in page], page[-1][0] if more and page else None)

    def _replay(self, delivery_id: str) -> Delivery:
        found = [d for _, d in self.storage.list("d/", Delivery) if d.id == delivery_id]
        if not found:
            if any(d.id == delivery_id for q in self.pending.values() for d in q):
                raise DeliveryNotDead(f"webhook delivery {delivery_id} is pending, not dead")
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
        self.storage.delete(dead_key(dead.stream, dead.seq))
        self.storage.put(pending_key(again.stream, again.seq), again)
        self.counters.dead_letters = max(0, self.counters.dead_letters - 1)
        self.storage.put("stats", self.counters)
        self._add(again)
        self._pump()
        return again


# -- the queue's side ----------------------------------------------------------------------------


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
        """Store the job's event in the JobActor's own turn (same commit as the job)."""
        return record_event(
            self.system.store, job, self.config, self.system.clock, progress_event=progress_event
        )

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
