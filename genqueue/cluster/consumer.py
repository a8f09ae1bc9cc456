"""The coordinator applies the events queue (and the dead-letter queue) to its JobActors.

Applying is idempotent. An event counts only while its job is processing the attempt the
event names; anything else (a duplicate, a late event, one of an earlier attempt, one for a
finished job) is deleted unapplied. An event for an attempt whose waiter is not registered
yet (the coordinator is still recovering after a restart) comes back a second later.

Progress and checkpoints are deleted once the JobActor stored them. An outcome is deleted
only after the JobActor's turn that ends the attempt is committed (the job's published
change says so): if the coordinator dies in between, the outcome is delivered again.
Messages of one job (one FIFO group) are applied in order; the first one not applied holds
back the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec

from genqueue.actors.job import JobActor
from genqueue.actors.messages import PauseDispatch
from genqueue.actors.queue import QueueActor
from genqueue.actors.services import QUEUE
from genqueue.cluster.coordinator import Coordinator, RemoteRun
from genqueue.cluster.messages import (
    Checkpoint,
    Heartbeat,
    Outcome,
    RateLimited,
    Work,
    decode_event,
    decode_work,
)
from genqueue.cluster.transport import Received
from genqueue.errors import ProviderError
from genqueue.jobqueue import JobQueue
from genqueue.models import Job

__all__ = ["EventsConsumer"]

log = logging.getLogger("genqueue.cluster")
CONSUMERS = 3  # concurrent long polls of the events queue
RETRY_S = 1  # visibility of an event put back for later


class EventsConsumer:
    """Started by `attach`: the events loops, the dead-letter loop and the depth sampler."""

    def __init__(self, coordinator: Coordinator, queue: JobQueue):
        self.co = coordinator
        self.queue = queue
        self.held: dict[str, list[tuple[str, str]]] = {}  # job id -> (queue, handle)
        self._loop = asyncio.get_running_loop()
        self._unsubscribe = queue.subscribe(self._published)
        coordinator.read_job = lambda job_id: JobActor.read(self._system(), job_id)

    def start(self) -> None:
        for _ in range(CONSUMERS):
            self.co.spawn(self._consume("events", self._apply_event))
        self.co.spawn(self._consume("dlq", self._apply_dead))
        self.co.spawn(self._sample_depths())

    def close(self) -> None:
        self._unsubscribe()

    # -- loops -----------------------------------------------------------------------------

    async def _consume(self, queue: str, apply: Any) -> None:
        wait_s = self.co.config.sqs_wait_s
        while True:
            try:
                msgs = await self.co.queues.receive(queue, 10, wait_s)
            except Exception as exc:
                log.warning("SQS receive failed", extra={"queue": queue, "error": repr(exc)})
                await asyncio.sleep(1)
                continue
            groups: dict[str, list[Received]] = {}
            for m in msgs:
                groups.setdefault(m.group, []).append(m)
            await asyncio.gather(*(self._apply_group(queue, ms, apply) for ms in groups.values()))

    async def _apply_group(self, queue: str, msgs: list[Received], apply: Any) -> None:
        for i, m in enumerate(msgs):
            try:
                done = await apply(m)
            except Exception:
                log.exception("applying an SQS message failed; it comes back later")
                done = False
            if not done:  # keep the job's order: the rest comes back after this one
                for rest in msgs[i:]:
                    with contextlib.suppress(Exception):
                        await self.co.queues.set_visibility(queue, rest.handle, RETRY_S)
                return

    async def _sample_depths(self) -> None:
        interval_s = max(1.0, min(5.0, self.co.config.worker_lease_s / 2))
        while True:
            try:
                self.co.depths = await self.co.queues.depths()
            except Exception as exc:
                log.warning("SQS depths unavailable", extra={"error": repr(exc)})
            await asyncio.sleep(interval_s)

    # -- one event -------------------------------------------------------------------------

    async def _apply_event(self, m: Received) -> bool:
        """True when the message is dealt with (deleted or held until a commit)."""
        try:
            event = decode_event(m.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("undecodable event dropped", extra={"error": str(exc)})
            await self.co.queues.delete("events", m.handle)
            return True
        self.co.counters["events"] += 1
        match event:
            case Heartbeat():
                self.co.saw_worker(event)
                await self._progress(event)
            case RateLimited():
                self._rate_limited(event)
            case Checkpoint() | Outcome():
                return await self._apply_job_event(m, event)
        await self.co.queues.delete("events", m.handle)
        return True

    def _rate_limited(self, event: RateLimited) -> None:
        """A worker's 429 pauses its provider from when the worker saw it (never later than
        now: a skewed clock cannot lengthen it); late, once that pause is over, nothing."""
        now = self.co.clock.now()
        seen_at = now if event.seen_at is None else min(event.seen_at, now)
        until = seen_at + max(1.0, event.retry_after_s)
        if until <= now:
            return  # e.g. delivered after a coordinator restart: its limit has lifted
        # The job that saw it retries; its end, if that is a 429 too, may find a quota.
        pause = PauseDispatch(until, provider=event.provider, promote=False)
        self._system().tell_from_loop(QueueActor, QUEUE.key, pause)

    async def _apply_job_event(self, m: Received, event: Checkpoint | Outcome) -> bool:
        run = self._current(event.job_id, event.attempt)
        if run is None:
            if await self._waiting_for(event.job_id, event.attempt):
                return False  # not recovered yet: it comes back
            self.co.counters["staleEvents"] += 1
            if isinstance(event, Outcome) and event.generation_id:
                with contextlib.suppress(Exception):  # a cancelled attempt's worker stopped
                    await self.co.board.uncancel(event.generation_id, event.attempt)
            await self.co.queues.delete("events", m.handle)
            return True
        if isinstance(event, Checkpoint):
            async with run.lock:
                run.work = event.checkpoint
                if event.progress is not None:
                    run.progress = max(run.progress, event.progress)
                await run.save(event.progress)
            await self.co.queues.delete("events", m.handle)
            return True
        self._hold(event.job_id, "events", m.handle)
        if not run.future.done():
            if event.result is not None:
                run.future.set_result(event.result)
            else:
                err = event.error
                assert err is not None
                run.future.set_exception(
                    ProviderError(
                        err.message,
                        retryable=err.retryable,
                        status=err.status,
                        retry_after_s=err.retry_after_s,
                        code=err.code,
                    )
                )
        return True

    async def _progress(self, beat: Heartbeat) -> None:
        for jb in beat.jobs:
            run = self._current(jb.job_id, jb.attempt)
            if run is not None and jb.progress > run.progress:
                run.progress = jb.progress
                await run.report(progress=jb.progress)

    async def _apply_dead(self, m: Received) -> bool:
        """A work message SQS moved to the dead-letter queue: its attempt fails, clearly."""
        try:
            work: Work = decode_work(m.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("undecodable message in the dead-letter queue", extra={"error": str(exc)})
            await self.co.queues.set_visibility("dlq", m.handle, 3600)
            return True
        job_id, attempt = work.job.id, work.attempt
        run = self._current(job_id, attempt)
        if run is None:
            if await self._waiting_for(job_id, attempt):
                return False
            await self.co.queues.delete("dlq", m.handle)
            return True
        self.co.counters["deadLettered"] += 1
        self._hold(job_id, "dlq", m.handle)
        if not run.future.done():
            n = self.co.config.sqs_max_receives
            run.future.set_exception(
                ProviderError(
                    f"attempt {attempt} was received by workers {n} times without an outcome "
                    "(they died or could not run it) and went to the SQS dead-letter queue",
                    retryable=False,
                    code="dead_lettered",
                )
            )
        return True

    # -- helpers ---------------------------------------------------------------------------

    def _current(self, job_id: str, attempt: int) -> RemoteRun | None:
        run = self.co.runs.get(job_id)
        return run if run is not None and run.attempt == attempt else None

    async def _waiting_for(self, job_id: str, attempt: int) -> bool:
        """The job is processing this attempt but its waiter is not registered (yet). Its
        record may be read from SQLite, behind a commit: off the loop."""
        job = await asyncio.to_thread(JobActor.read, self._system(), job_id)
        return job is not None and job.status == "processing" and job.attempts == attempt

    def _system(self) -> Any:
        return self.queue.parts()[0]

    def _hold(self, job_id: str, queue: str, handle: str) -> None:
        self.held.setdefault(job_id, []).append((queue, handle))

    def _published(self, job: Job) -> None:
        """(The job-events thread) a job's change is committed."""
        if job.status != "processing" and job.id in self.held:
            with contextlib.suppress(RuntimeError):  # the loop closed
                self._loop.call_soon_threadsafe(self._release, job.id)
        if job.terminal:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.co.job_ended, job)

    def _release(self, job_id: str) -> None:
        for queue, handle in self.held.pop(job_id, []):
            self.co.spawn(self._delete(queue, handle))

    async def _delete(self, queue: str, handle: str) -> None:
        try:
            await self.co.queues.delete(queue, handle)
        except Exception as exc:  # it comes back, is found stale, and is deleted then
            log.warning("SQS delete failed", extra={"error": repr(exc)})
