"""QueueActor: the singleton that orders pending jobs and dispatches them by alarm.

What it stores, and under which keys: queue_records.py.

Dispatch ("alarm" mode): the alarm pops jobs while `in_flight < max_concurrency`,
the user's cap allows and the rate limit has a token; an empty bucket sets the
alarm to the next token's time; a finished job sets it to now. Nothing polls.
The waiting line (`fairline.FairLine`) orders jobs by priority, then round robin
between users within a priority, then FIFO per user; its turn pointers live in `meta`.
A submission past `max_queued` (all users) or `max_queued_per_user` waiting jobs is
refused with `QueueFull`, before anything is stored.

The same alarm is the watchdog of every job in flight (watchdog.py): one timer for all,
not one per job. Provider pauses and their escalation to a quota pause are gates.py's.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import msgspec

from genqueue.actors.fairline import FairLine, check_room
from genqueue.actors.flights import Flights
from genqueue.actors.gates import ProviderGates
from genqueue.actors.job import RATE_LIMIT_PAUSE_S, JobActor
from genqueue.actors.messages import (
    Accepted,
    Finished,
    PauseDispatch,
    Recover,
    Remove,
    Requeue,
    Start,
    Status,
    Submit,
    SubmitMany,
    TimedOut,
)
from genqueue.actors.picking import pick_next
from genqueue.actors.queue_records import InFlight, Pending, QueueMeta, pending_key
from genqueue.actors.retention import remove_finished
from genqueue.actors.runtime import AlarmInfo, DurableActor
from genqueue.actors.services import QUEUE
from genqueue.actors.spend import SpendBook
from genqueue.actors.stats import QueueStats, queue_status
from genqueue.actors.system import ActorSystem
from genqueue.actors.watchdog import Watchdog
from genqueue.errors import QueueFull
from genqueue.models import Job, QueueStatus
from genqueue.storage.jobindex import JobIndex

__all__ = ["QueueActor"]

log = logging.getLogger("genqueue.queue")


class QueueActor(DurableActor):
    kind = QUEUE.kind
    passivate_when_idle = False

    def __init__(self, system: ActorSystem, key: str):
        super().__init__(system, key)
        self.svc = system.queue_services()
        self.cfg = self.svc.config
        self.line: FairLine[Pending] = FairLine()
        self.in_flight = Flights()  # in start order: the watchdog relies on it
        self.watchdog = Watchdog(self.cfg.job_watchdog_s, self.clock.now())
        self.retry_wait = 0
        self.meta = QueueMeta()
        self.spend = SpendBook(self.meta.spend)
        self.gates = ProviderGates(self.cfg)
        self.stats = QueueStats(self.clock)
        self._dispatch_due = False  # a dispatch pass at the end of this turn
        self._meta_dirty = False  # meta is stored at the end of this turn
        self._fresh: dict[str, Job] = {}  # jobs created in this turn (their actor never ran)

    def activate(self) -> None:
        self.meta = self.storage.get("meta", QueueMeta) or QueueMeta()
        self.gates.load(self.meta)
        now = self.clock.now()
        self.watchdog = Watchdog(self.cfg.job_watchdog_s, now)
        self.line = FairLine(self.meta.turns)
        self.spend = SpendBook(self.meta.spend)
        for key, entry in self.storage.list("pending/", Pending):
            self.spend.reserve(entry.job_id, entry.user_id, entry.cost)
            if entry.started_at is None:
                self.line.add(entry)
            else:
                flight = InFlight(entry.user_id, entry.started_at, key, entry.provider)
                self._add_flight(entry.job_id, flight)
        for job_id in self.in_flight:
            self.tell_after_commit(JobActor, job_id, Recover())
        if self.meta.next_retention_at == 0.0:
            self.meta.next_retention_at = now + self.cfg.retention_interval_s
        self.set_alarm(now + self.cfg.cron_interval_s if self.cfg.dispatch == "cron" else now)

    # -- messages --------------------------------------------------------------------------------

    def receive(self, message: Any) -> Any:
        match message:
            case Submit(job=job, client_id=client_id):
                submitted = self._submit(job, client_id)
                self._arrived()
                return submitted
            case SubmitMany(submissions=submissions):
                results: list[tuple[Job, bool] | QueueFull] = []
                for sub in submissions:
                    try:
                        results.append(self._submit(sub.job, sub.client_id))
                    except QueueFull as exc:  # refused before anything was stored
                        results.append(exc)
                self._arrived()
                return results
            case Finished():
                return self._finished(message)
            case Requeue(job_id=job_id, user_id=user_id, priority=priority, seq=seq):
                self.retry_wait = max(0, self.retry_wait - 1)
                now = self.clock.now()
                cost = self.spend.reserved_cost(job_id)
                provider = message.provider
                entry = Pending(job_id, user_id, priority, seq, now, cost=cost, provider=provider)
                self._enqueue(entry)
                if self.cfg.dispatch == "immediate":  # like a submit: start at once
                    self._start(self._take_pending(priority, seq, user_id), now)
                self._arrived()
            case Remove():
                self._removed(message)
            case PauseDispatch(until=until, reason=reason, provider=provider):
                self._pause(until, reason, provider, promote=message.promote)
            case Accepted(job_id=job_id):
                self._accepted(job_id)
            case Status():
                return self.status()
            case _:
                raise TypeError(f"QueueActor cannot handle {message!r}")
        return None

    def _submit(self, job: Job, client_id: bool) -> tuple[Job, bool]:
        existing = JobActor.read(self.system, job.id) if client_id else None
        if existing is not None:
            return existing, False
        # QueueFull past a cap, checked before any change
        check_room(self.line, job.user_id, self.cfg.max_queued, self.cfg.max_queued_per_user)
        now = self.clock.now()
        # held while it waits: the dearest of the providers it may run on
        cost = max([job.estimated_cost, *(r.cost for r in job.routes or [])])
        self.spend.check(job.user_id, cost, self.cfg.budget_per_user_day, now)
        seq = self.meta.next_seq
        self.meta.next_seq += 1
        entry = Pending(
            job.id,
            job.user_id,
            job.priority,
            seq,
            now,
            cost=cost,
            provider=job.provider,
            fallback=tuple(r.provider for r in (job.routes or [])[1:]),
        )
        self.spend.reserve(job.id, job.user_id, cost)
        self._enqueue(entry)
        job = msgspec.structs.replace(
            job, seq=seq, status="queued", queued_at=now, queue_position=self.line.position(entry)
        )
        JobActor.create(self.system, job)
        self._fresh[job.id] = job
        # list order for `list_jobs`: per user and for all users, newest first
        self.storage.last_seq = JobIndex(self.system.store).add(job)
        self._count("submitted")
        self._save_meta()
        self.after_commit(functools.partial(self.svc.publish, job))
        if self.cfg.dispatch == "immediate":
            self._start(self._take_pending(job.priority, seq, job.user_id), now)
        return job, True

    def _arrived(self) -> None:
        """Jobs joined the line. Alarm mode dispatches in this turn (what an alarm set to now
        would do, without the round trip through the scheduler: the dispatch is committed
        with the submission); every mode keeps the alarm the watchdog needs."""
        if self.cfg.dispatch in ("alarm", "sqs"):  # sqs: the coordinator dispatches as alarm
            self._dispatch_due = True
            return
        at, due = self._next_alarm(None), self.get_alarm()
        if due is None or due > at:
            self.set_alarm(at)

    def _finished(self, msg: Finished) -> None:
        flight = self.in_flight.end(msg.job_id, msg.user_id)
        if flight is None:
            return  # already accounted (a repeated report after a restart)
        self.watchdog.finished(msg.job_id)
        self.gates.ended(flight.provider)
        self.storage.delete(flight.key)
        if msg.status == "retry_wait":
            self.retry_wait += 1
            self._count("retried")
        else:
            self._count(msg.status)
            self._index_finished(msg.job_id, msg.user_id)
            self.spend.release(msg.job_id)
            self.spend.charge(msg.user_id, msg.provider, msg.cost, self.clock.now())
            until, _ = self.gates.pause_of(self.meta, flight.provider)
            if msg.status == "completed" and until <= self.clock.now():
                # the provider works again: a pause is news
                self.gates.set_pause(self.meta, flight.provider, until, "")
            self.stats.finished(msg.status, msg.wait_s, msg.processing_s)
        self._save_meta()
        if self.cfg.dispatch in ("alarm", "sqs"):  # sqs: the coordinator dispatches as alarm
            self._dispatch_due = True  # what an alarm set to now would do, without the round trip
        self._tell_if_idle()

    def _removed(self, msg: Remove) -> None:
        """A job was cancelled before it was dispatched (queued) or while waiting to retry."""
        if msg.was == "retry_wait":
            self.retry_wait = max(0, self.retry_wait - 1)
        else:
            self._remove_pending(msg.priority, msg.seq, msg.job_id, msg.user_id)
        self._count("cancelled")
        self.spend.release(msg.job_id)
        self._index_finished(msg.job_id, msg.user_id)
        self._save_meta()
        self._tell_if_idle()

    def _tell_if_idle(self) -> None:
        on_idle = self.svc.on_idle
        if on_idle is not None and not self.in_flight and not self.retry_wait and not self.depth():
            self.after_commit(on_idle)

    def _index_finished(self, job_id: str, user_id: str) -> None:
        """Record a terminal job for retention."""
        now = self.clock.now()
        self.storage.put(f"finished/{int(now * 1000):015d}/{job_id}", user_id)

    def _pause(
        self, until: float, reason: str = "rate_limit", provider: str = "veo3", promote: bool = True
    ) -> None:
        reason, until, changed = self.gates.pause(
            self.meta,
            provider,
            until,
            reason,
            self.clock.now(),
            rate_limit_pause_s=RATE_LIMIT_PAUSE_S,
            quota_pause_s=self.cfg.veo3_quota_pause_s,
            promote=promote,
        )
        self._count("rate_limit_hits" if reason == "rate_limit" else "quota_pauses")
        if changed:
            self._save_meta()
            log.warning(
                "dispatch paused by the provider",
                extra={"until": until, "reason": reason, "provider": provider},
            )

    def _accepted(self, job_id: str) -> None:
        """A job dispatched after the last pause ended had its start accepted."""
        flight = self.in_flight.get(job_id)
        if flight is not None and self.gates.works_again(
            self.meta, flight.provider, flight.started_at
        ):
            self._save_meta()

    # -- dispatch ----------------------------------------------------------------------------------

    def alarm(self, info: AlarmInfo) -> None:
        now = self.clock.now()
        if now >= self.meta.next_retention_at:
            self._retention(now)
        self._watchdog(now)
        next_at = self.dispatch(now)
        if self.cfg.dispatch == "cron":
            next_at = now + self.cfg.cron_interval_s
        self.set_alarm(self._next_alarm(next_at))

    def _dispatch_here(self) -> None:
        """Run a dispatch pass in this turn, then keep the alarm for what comes next."""
        now = self.clock.now()
        next_at = self.dispatch(now)
        due = self.get_alarm()
        if due is None or due > now:
            self.set_alarm(self._next_alarm(next_at))

    def _next_alarm(self, dispatch_at: float | None) -> float:
        """The earliest of: the next dispatch, the next retention pass, the next deadline."""
        at = self.meta.next_retention_at
        if dispatch_at is not None:
            at = min(at, dispatch_at)
        deadline = self.watchdog.next_deadline(self.in_flight)
        return at if deadline is None else min(at, deadline)

    def _watchdog(self, now: float) -> None:
        for job_id in self.watchdog.due(self.in_flight, now):
            self.tell_after_commit(JobActor, job_id, TimedOut())

    def dispatch(self, now: float) -> float | None:
        """Start what the caps allow; return when to look again (None: when something ends).
        Each provider has its own gate (pause, rate limit, cap): a closed one holds back only
        its own jobs."""
        blocked = self._at_cap if self.cfg.max_per_user else None
        while len(self.in_flight) < self.cfg.max_concurrency:
            entry, wake, fell_back_from = pick_next(self.line, self.gates, self.meta, now, blocked)
            if entry is None:
                return wake
            if fell_back_from is not None:  # its provider is paused
                log.info(
                    "job falls back to another provider",
                    extra={"job_id": entry.job_id, "from": fell_back_from, "to": entry.provider},
                )
                self._count("fallbacks")
            self.gates.spend(entry.provider, now)
            self._start(entry, now)
        return None

    def _at_cap(self, user_id: str) -> bool:
        return self.in_flight.of_user(user_id) >= self.cfg.max_per_user

    def _start(self, entry: Pending, now: float) -> None:
        """Dispatch a job taken off the waiting line: its entry is stored as in flight."""
        key = pending_key(entry.priority, entry.seq)
        self._add_flight(entry.job_id, InFlight(entry.user_id, now, key, entry.provider))
        self.storage.put(key, msgspec.structs.replace(entry, started_at=now))
        self.gates.save(self.meta)
        self._save_meta()
        waited = now - entry.enqueued_at
        self.stats.started(waited)
        fresh = self._fresh.pop(entry.job_id, None)
        if fresh is None:
            self.tell_after_commit(JobActor, entry.job_id, Start(waited, entry.provider))
        else:  # created in this turn: stored as started, and started, by this turn (one commit)
            job = JobActor.create_started(self.system, fresh, entry.provider, now)
            self.after_commit(functools.partial(self.svc.publish, job))
            JobActor.run_for(self, job)

    # -- pending bookkeeping ---------------------------------------------------------------------

    def _enqueue(self, entry: Pending) -> None:
        self.line.add(entry)  # a retried job goes back to its own place
        self.storage.put(pending_key(entry.priority, entry.seq), entry)

    def _take_pending(self, priority: int, seq: int, user_id: str) -> Pending:
        """Take an entry off the waiting line (in memory; its stored entry stays)."""
        entry = self.line.find(priority, seq, user_id)
        assert entry is not None, (priority, seq)
        self.line.remove(entry)
        return entry

    def _remove_pending(self, priority: int, seq: int, job_id: str, user_id: str) -> None:
        entry = self.line.find(priority, seq, user_id)
        if entry is not None and entry.job_id == job_id:
            self.line.remove(entry)
            self.storage.delete(pending_key(priority, seq))

    def _add_flight(self, job_id: str, flight: InFlight) -> None:
        self.in_flight.add(job_id, flight)
        self.gates.added(flight.provider)

    def depth(self) -> int:
        return len(self.line)

    # -- retention, counters, status -------------------------------------------------------------

    def _retention(self, now: float) -> None:
        cutoff_ms = int((now - self.cfg.retention_days * 86400) * 1000)
        removed, gone = remove_finished(self.system, self.storage, cutoff_ms)
        self.storage.last_seq = max(self.storage.last_seq, self.system.store.write_seq)
        self.meta.next_retention_at = now + self.cfg.retention_interval_s
        self._count("retention_deleted", removed)
        self._save_meta()
        on_retained = self.svc.on_retained
        if on_retained is not None and gone:  # their videos and objects go once committed
            self.after_commit(functools.partial(on_retained, gone))
        if removed:
            log.info("retention removed finished jobs", extra={"count": removed})

    def _count(self, name: str, n: int = 1) -> None:
        self.meta.counters[name] = self.meta.counters.get(name, 0) + n

    def _save_meta(self) -> None:
        self._meta_dirty = True

    def before_commit(self) -> None:
        """Once per turn, however many messages it handled (a batch of tells is one turn):
        one dispatch pass for every arrival and end, then meta stored once."""
        try:
            if self._dispatch_due:
                self._dispatch_due = False
                self._dispatch_here()
        finally:  # a turn that fails before this restarts the actor (runtime.py)
            self._fresh.clear()
        if self._meta_dirty:
            self._meta_dirty = False
            self.storage.put("meta", self.meta)

    def status(self) -> QueueStatus:
        return queue_status(self, self.clock.now())
