"""WebhookActor: the durable outbox (the plan's sendWebhookToNextJS, with its TODO done).

A job's event is stored by `record_event` in the turn that stores the job's change (same
commit as the job's new record: its JobActor's, or the queue's that created it started),
then the singleton WebhookActor sends it, signed, and retries it on its alarm until a 2xx
or the last attempt; then it is dead-lettered: kept, counted, listed and replayable with
the same `webhook-id`.

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

import bisect
import heapq
import logging
import random
from typing import Any

import msgspec

from genqueue.actors.runtime import AlarmInfo, DurableActor
from genqueue.actors.system import ActorSystem
from genqueue.actors.webhook.events import build_delivery, dead_key, pending_key
from genqueue.actors.webhook.messages import (
    KIND,
    MAX_IN_FLIGHT,
    Fresh,
    GetWebhookStats,
    PageDead,
    Replay,
    Sent,
    Wake,
)
from genqueue.errors import DeliveryNotDead, DeliveryNotFound
from genqueue.retry import RetryPolicy
from genqueue.webhooks import DeadLetters, Delivery, SendOutcome, WebhookStats


class _Counters(msgspec.Struct):
    """The persisted part of WebhookStats (new fields get defaults)."""

    sent: int = 0
    failed_attempts: int = 0
    retries: int = 0
    dead: int = 0
    dead_letters: int = 0


# -- the actor ---------------------------------------------------------------------------------

__all__ = ["WebhookActor"]

log = logging.getLogger("genqueue.webhook")

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
        self.retry: RetryPolicy = outbox.config.webhook_retry
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
            if not result.retryable or self.retry.gives_up(sent.attempts):
                self._dead(sent)
            else:
                self._retry(sent, now + self.retry.delay_s(sent.attempts, self.rng))

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
