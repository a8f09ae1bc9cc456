"""JobActor: one per job. Owns the record and its state machine; runs the processor.

    queued -> processing -> completed | failed | cancelled
    processing -> retry_wait -> queued        (the backoff is this actor's alarm)
    queued | retry_wait -> cancelled

Illegal transitions raise IllegalTransition and change nothing. In retry_wait the
alarm is the backoff (`Config.job_retry`). The watchdog (`job_watchdog_s`, TOML
`job_watchdog_s`) is the QueueActor's: one alarm for
every job in flight, which sends `TimedOut` to a job processing past its time.
A job that reaches a terminal state passivates at once: live threads follow work.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, NoReturn

import msgspec

from genqueue.actors.bridge import Outcome
from genqueue.actors.gate import start_coroutine
from genqueue.actors.hosting import HostedActor
from genqueue.actors.job_routes import dispatched, generation_checkpoint, next_route, routed
from genqueue.actors.messages import (
    Accepted,
    Cancel,
    Finished,
    GetJob,
    PauseDispatch,
    Recover,
    Remove,
    Report,
    Requeue,
    Start,
    TimedOut,
)
from genqueue.actors.runtime import AlarmInfo, Durable
from genqueue.actors.services import QUEUE
from genqueue.actors.system import ActorSystem
from genqueue.errors import IllegalTransition, InvalidRequest, JobNotFound, ProviderError
from genqueue.models import Job, JobResult, JobStatus
from genqueue.processor import Report as ReportFn
from genqueue.processor import stored_copy
from genqueue.storage.state import Namespace

__all__ = ["JobActor"]

RATE_LIMIT_PAUSE_S = 60.0  # a 429 without a delay: the window of a per-minute quota
log = logging.getLogger("genqueue.job")

ALLOWED: dict[str, frozenset[str]] = {
    "queued": frozenset({"processing", "cancelled"}),
    "processing": frozenset({"completed", "failed", "cancelled", "retry_wait"}),
    "retry_wait": frozenset({"queued", "cancelled"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


class JobActor(HostedActor):
    kind = "job"
    cache_keys = 100_000  # activation reads a recent job's record from memory, not SQLite

    def __init__(self, system: ActorSystem, key: str):
        super().__init__(system, key)
        self.svc = system.queue_services()
        self.job: Job | None = None

    def activate(self) -> None:
        self.job = self.storage.get("record", Job)

    # -- messages ----------------------------------------------------------------------------

    def receive(self, message: Any) -> Any:
        if self._current() is None:
            raise JobNotFound(f"job {self.key} does not exist")
        match message:
            case GetJob():
                return self.job
            case Start(wait_s=wait_s, provider=provider):
                return self._start(wait_s, provider)
            case Recover():
                return self._recover()
            case Report(progress=progress, checkpoint=checkpoint):
                return self._report(progress, checkpoint)
            case Cancel(reason=reason):
                return self._cancel(reason)
            case TimedOut():
                return self._timed_out()
        raise TypeError(f"JobActor cannot handle {message!r}")

    def _start(self, wait_s: float | None, provider: str = "") -> Job:
        job = self._job()
        if job.status != "queued":
            # Cancelled while the queue dispatched it: give the slot back.
            self._tell_queue(Finished(job.id, job.user_id, job.status))
            return job
        job = routed(job, provider)
        self._save(job, status="processing", **dispatched(job, self.clock.now()))
        self._run()
        return self._job()

    def _recover(self) -> Job:
        job = self._job()
        if job.status == "processing" and not self.async_tokens():
            log.info("resuming job %s after restart", job.id, extra={"job_id": job.id})
            self._run()
        elif job.status == "queued":
            self._start(None)
        elif job.status != "processing":
            self._tell_queue(Finished(job.id, job.user_id, job.status))
        return self._job()

    def _report(self, progress: int | None, checkpoint: Any) -> None:
        job = self._job()
        if job.status != "processing":
            return
        changes: dict[str, Any] = {}
        if progress is not None:
            changes["progress"] = max(0, min(100, int(progress)))
        if checkpoint is not None:
            changes["checkpoint"] = checkpoint
        if changes:
            self._save(job, status="processing", **changes)
        if checkpoint is not None and progress is not None:
            # Work moved forward (GenerationActor: the operation Veo accepted, progress 5; a
            # worker's checkpoint event alike). The coordinator's own save at dispatch carries
            # no progress: it says nothing of the provider.
            self._tell_queue(Accepted(job.id))
        self._maybe_step_aside()

    def _cancel(self, reason: str) -> Job:
        job = self._job()
        if job.terminal:
            raise IllegalTransition(f"job {job.id} is already {job.status}")
        if job.status == "processing":
            tokens = self.async_tokens()
            self.storage.put("cancel", reason)  # the outcome may reach another instance
            for token in tokens:
                self.cancel_async(token)
            if not tokens:
                self._end("cancelled", error=reason)
            return self._job()
        was = job.status
        self._save(job, status="cancelled", error=reason, finished_at=self.clock.now())
        self.delete_alarm()
        self._tell_queue(Remove(job.id, job.priority, job.seq, job.user_id, was))
        self.passivate()
        return self._job()

    # -- running the processor -------------------------------------------------------------------

    def _run(self) -> None:
        JobActor.run_for(self, self._job())
        self._maybe_step_aside()

    @staticmethod
    def run_for(turn: Durable, job: Job) -> None:
        """Start `job`'s processor once `turn`'s writes are durable: this actor's turn, or the
        queue's that stored the job as started (`create_started`), so no turn of its own
        comes before the start. By method name: the outcome (or a report) may find this
        job's actor passivated, or never activated, and activates it."""
        system = turn.system
        try:
            coro = system.queue_services().processor(job, _reporter(system, job.id))
        except Exception as exc:  # raised by the call itself: this job's outcome, not the turn's
            coro = _raise(exc)
        start_coroutine(turn, JobActor, job.id, coro, "_finished")

    def _finished(self, outcome: Outcome) -> None:
        job = self._current()
        if job is None or job.status != "processing":
            return
        if not outcome.cancelled and outcome.error is None:
            self._end("completed", result=_as_result(outcome.value))
            return
        # A cancel may have been asked (and answered) as the processor failed on its own:
        # the job ends cancelled, not retried.
        reason = self.storage.get("cancel", str)
        if reason is not None:
            self._end("cancelled", error=reason)
        elif outcome.error is not None:
            self._on_error(job, outcome.error)
        else:
            self._fail_or_retry(job, f"timed out after {self.svc.config.job_watchdog_s:g} s", True)

    def _on_error(self, job: Job, exc: BaseException) -> None:
        if isinstance(exc, ProviderError) and exc.code == "model_not_found":
            route = next_route(job)
            if route is not None:  # the provider refuses the model: the caller's next one
                log.warning(
                    "job falls back: its provider refused the model",
                    extra={"job_id": job.id, "from": job.provider, "to": route.provider},
                )
                job = msgspec.structs.replace(
                    job,
                    provider=route.provider,
                    model=route.model,
                    estimated_cost=route.cost,
                    attempts=max(0, job.attempts - 1),  # nothing ran: no attempt spent
                )
                self._save(job, status="retry_wait", error=exc.message)
                self.set_alarm(self.clock.now())
                self._tell_queue(Finished(job.id, job.user_id, "retry_wait"))
                return
        if isinstance(exc, ProviderError):
            if exc.code == "quota_exhausted":
                # The provider's daily quota: dispatch pauses (long, shown in the queue's
                # pausedUntil) and this job waits it out without spending an attempt.
                until = self.clock.now() + (exc.retry_after_s or 3600.0)
                self._tell_queue(PauseDispatch(until, reason="quota", provider=job.provider))
                job = msgspec.structs.replace(job, attempts=max(0, job.attempts - 1))
                self._save(job, status="retry_wait", error=exc.message)
                self.set_alarm(until)
                self._tell_queue(Finished(job.id, job.user_id, "retry_wait"))
                return
            if exc.status == 429:
                # A per-minute limit pauses everyone: for Retry-After / RetryInfo when Google
                # gives it, else for the minute such a limit counts.
                pause_s = exc.retry_after_s or RATE_LIMIT_PAUSE_S
                self._tell_queue(PauseDispatch(self.clock.now() + pause_s, provider=job.provider))
            self._fail_or_retry(job, exc.message, exc.retryable)
        elif isinstance(exc, InvalidRequest):
            self._end("failed", error=exc.message)
        else:
            log.error("processor of job %s raised %r", job.id, exc, extra={"job_id": job.id})
            self.svc.on_unexpected(job.id, exc)
            self._end("failed", error=f"internal error: {type(exc).__name__}: {exc}")

    def _fail_or_retry(self, job: Job, error: str, retryable: bool) -> None:
        policy = self.svc.config.job_retry
        if not retryable or policy.gives_up(job.attempts):
            self._end("failed", error=error)
            return
        self._save(job, status="retry_wait", error=error)
        self.set_alarm(self.clock.now() + policy.delay_s(job.attempts))
        self._tell_queue(Finished(job.id, job.user_id, "retry_wait"))

    def _end(
        self, status: JobStatus, *, result: JobResult | None = None, error: str | None = None
    ) -> None:
        job = self._job()
        now = self.clock.now()
        self._save(
            job,
            status=status,
            result=result,
            error=error,
            finished_at=now,
            progress=100 if status == "completed" else job.progress,
        )
        if status == "cancelled":
            self.storage.delete("cancel")
        wait = (job.started_at or now) - (job.queued_at or job.created_at)
        spent = generation_checkpoint(job).get("spent", 0.0)
        self._tell_queue(
            Finished(
                job.id,
                job.user_id,
                status,
                wait,
                now - (job.started_at or now),
                cost=float(spent),
                provider=job.provider,
            )
        )
        self.passivate()

    # -- the backoff (alarm) and the watchdog ---------------------------------------------------

    def alarm(self, info: AlarmInfo) -> None:
        job = self._current()
        if job is not None and job.status == "retry_wait":
            self._save(job, status="queued", queued_at=self.clock.now())
            self._tell_queue(Requeue(job.id, job.user_id, job.priority, job.seq, job.provider))
            self.passivate()

    def _timed_out(self) -> None:
        job = self._job()
        if job.status != "processing":
            return  # it ended meanwhile
        log.warning("job %s passed its timeout", job.id, extra={"job_id": job.id})
        tokens = self.async_tokens()
        for token in tokens:
            self.cancel_async(token)  # ends as a timeout in _finished
        if not tokens:
            self._fail_or_retry(job, "timed out", True)

    # -- helpers --------------------------------------------------------------------------------

    def _maybe_step_aside(self) -> None:
        """While its coroutine runs a job needs no thread: passivate when many actors are live."""
        if self.system.live_count() > self.svc.config.live_actors_soft_cap:
            self.passivate()

    def _job(self) -> Job:
        assert self.job is not None
        return self.job

    def _current(self) -> Job | None:
        """The job's record; read again if this instance saw the job end or not exist: its
        record may have been removed by retention since, and its client id reused (the
        queue stores a new job's record without its actor)."""
        if self.job is None or self.job.terminal:
            self.job = self.storage.get("record", Job)
        return self.job

    def _save(self, job: Job, *, status: JobStatus, **changes: Any) -> None:
        if status != job.status and status not in ALLOWED[job.status]:
            raise IllegalTransition(f"job {job.id}: {job.status} -> {status} is not allowed")
        new = msgspec.structs.replace(job, status=status, updated_at=self.clock.now(), **changes)
        self.storage.put("record", new)
        self.job = new
        progressed = status == job.status and new.progress != job.progress
        webhooks = self.svc.webhooks
        if webhooks is not None and (status != job.status or progressed):
            # Same turn, same commit: a terminal job and its webhook are stored together.
            seq = webhooks.on_event(new, progressed)
            self.storage.last_seq = max(self.storage.last_seq, seq or 0)
        self.after_commit(functools.partial(self.svc.publish, new))

    def _tell_queue(self, message: Any) -> None:
        self.tell_after_commit(self.system.kind_of(QUEUE.kind), QUEUE.key, message)

    @staticmethod
    def create(system: ActorSystem, job: Job) -> int:
        """Store a new job's first record (in the submitting queue turn); returns the write seq."""
        return JobActor.table(system).put(f"{job.id}/record", job)

    @staticmethod
    def create_started(system: ActorSystem, job: Job, provider: str, now: float) -> Job:
        """Store a job created in this queue turn as already dispatched (on `provider`, at
        `now`), as its own Start turn would (see `_start`); the queue's turn then starts its
        processor (`run_for`). Its actor has never run, and runs no turn before the start:
        one commit, not two, comes before the provider's start call. A cancel before that
        commit (only a client-chosen id can be known that early) finds it processing with
        its coroutine's token, and the coroutine starts cancelled (tasks.py)."""
        job = routed(job, provider)
        new = msgspec.structs.replace(
            job, status="processing", updated_at=now, **dispatched(job, now)
        )
        JobActor.table(system).put(f"{job.id}/record", new)
        webhooks = system.queue_services().webhooks
        if webhooks is not None:  # same turn, same commit, as `_save` stores it
            webhooks.on_event(new, False)
        return new

    @staticmethod
    def read(system: ActorSystem, job_id: str) -> Job | None:
        """A job's stored record, without activating its actor."""
        return JobActor.table(system).get(f"{job_id}/record", Job)

    @staticmethod
    def table(system: ActorSystem) -> Namespace:
        return system.store.namespace(JobActor.kind, cache=JobActor.cache_keys)


async def _raise(exc: Exception) -> NoReturn:
    raise exc


def _reporter(system: ActorSystem, job_id: str) -> ReportFn:
    async def report(progress: int | None = None, checkpoint: Any = None) -> None:
        await system.ask_async(JobActor, job_id, Report(progress, stored_copy(checkpoint)))

    return report


def _as_result(value: Any) -> JobResult:
    if isinstance(value, JobResult):
        return value
    if isinstance(value, dict):
        return msgspec.convert(value, JobResult)
    raise TypeError(f"a processor must return a JobResult, not {type(value).__name__}")
