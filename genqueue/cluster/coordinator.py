"""The coordinator's side of `dispatch = "sqs"`: a processor that runs jobs on workers.

The QueueActor dispatches as in one process, and the JobActor runs its processor: here the
processor sends the attempt to the work queue and waits for its outcome, which the events
consumer (consumer.py) hands to it. So the JobActor, the webhook outbox, the retries and
the watchdog are the one-machine ones; this file only carries the attempt away and back.

What the coordinator stores of a remote attempt is the job's checkpoint,
`{"attempt": N, "dispatch": D, "work": <the generation's checkpoint>}`: `attempt` and
`dispatch` say the work message of this dispatch was sent (so a restart does not send it
again), `work` is the latest checkpoint a worker reported (the Veo operation's name), sent
with the next attempt's work message.

A dispatch is named by the job's `started_at`, stored by the turn that makes the job
`processing` (its JobActor's, or the queue's that created it started) before this processor
runs (a coroutine starts after its turn's commit), and which a restart's recovery keeps. So:
- a job back from a daily-quota pause (the attempt given back: the same N again) is a new
  dispatch, with a new `started_at`: its work message is sent, under a new deduplication id;
- a coordinator that dies between the send and the record resends the same dispatch under
  the same deduplication id (`{job}.{N}.{D}`), which SQS drops within its 5-minute window:
  never two work messages, so never two workers starting, for one dispatch.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec

from genqueue.actors.job import ReportFn
from genqueue.clock import Clock, RealClock
from genqueue.cluster.messages import Heartbeat, Work, encode, encode_params
from genqueue.cluster.transport import Board, Queues
from genqueue.config import Config
from genqueue.errors import ProviderError
from genqueue.models import Job, JobResult
from genqueue.retry import RetryPolicy
from genqueue.storage.videourls import stored_video_key

__all__ = ["Coordinator", "RemoteRun", "WorkerSeen"]

log = logging.getLogger("genqueue.cluster")
MAX_WORK_BYTES = 250_000  # SQS takes 256 KiB a message
INLINE_WORK_BYTES = 64 * 1024  # a larger work message with images sends them through S3
SEND_TRIES = 5
# a failed send is retried after 0.5 s, then doubling, jittered by half: sends that failed
# together do not all retry together
_JITTER = random.Random()  # the retries' jitter (not the delays' rule: that is SEND_RETRY)
SEND_RETRY = RetryPolicy(initial_interval_s=0.5, maximum_attempts=SEND_TRIES, jitter=0.5)
NOTICE_LOOKS = 50  # a cancelled run's job leaves `processing` within 5 s (one actor turn)


@dataclass
class RemoteRun:
    """An attempt in flight on some worker, as the coordinator waits for it."""

    job_id: str
    attempt: int
    report: ReportFn
    future: asyncio.Future[JobResult]
    work: Any = None  # the generation's latest checkpoint
    progress: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    dispatch: float = 0.0  # see dispatch_of

    async def save(self, progress: int | None = None) -> None:
        """Store the attempt's state in the job (durable before it returns)."""
        ckpt = {"attempt": self.attempt, "dispatch": self.dispatch, "work": self.work}
        await self.report(progress=progress, checkpoint=ckpt)


@dataclass
class WorkerSeen:
    beat: Heartbeat
    seen_at: float


class _Stored(msgspec.Struct):
    attempt: int = 0
    work: Any = None
    dispatch: float | None = None  # the job's started_at when it was sent (None: older)


def dispatch_of(job: Job) -> float:
    """The name of one dispatch of a job: the `started_at` its Start stored."""
    return job.started_at if job.started_at is not None else 0.0


def dedup_id(job_id: str, attempt: int, dispatch: float = 0.0) -> str:
    """SQS's MessageDeduplicationId (at most 128 characters): one per dispatch, the same
    for a resend of that dispatch."""
    raw = f"{job_id}.{attempt}.{dispatch!r}"
    return raw if len(raw) <= 128 else hashlib.sha256(raw.encode()).hexdigest()


def _sent(stored: _Stored, job: Job) -> bool:
    """The work message of this dispatch of `job` went out already."""
    if stored.attempt != job.attempts:
        return False
    # A record of an older version has no dispatch: taken as sent (never sent twice).
    return stored.dispatch is None or stored.dispatch == dispatch_of(job)


class Coordinator:
    """The Processor of a coordinator: `await coordinator(job, report)` runs the job remotely."""

    def __init__(self, config: Config, *, clock: Clock | None = None):
        self.config = config
        self.clock: Clock = clock or RealClock()
        self.queues = Queues(config)
        self.board = Board(config)
        self.runs: dict[str, RemoteRun] = {}
        self.workers: dict[str, WorkerSeen] = {}
        self.depths: dict[str, dict[str, int]] = {}
        self.counters = {"dispatched": 0, "deadLettered": 0, "staleEvents": 0, "events": 0}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closing = False  # shutting down: the runs' cancellation is no cancel
        self.read_job: Callable[[str], Job | None] | None = None  # set by the consumer

    async def start(self) -> None:
        await self.queues.start()
        await self.board.start()

    async def stop_tasks(self) -> None:
        """Before the queue closes: stop consuming, and do not take the runs' coming
        cancellation (the actors stopping) for cancels: the workers carry on."""
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.stop_tasks()
        await self.board.close()
        await self.queues.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def __call__(self, job: Job, report: ReportFn) -> JobResult:
        stored = _stored(job.checkpoint)
        loop = asyncio.get_running_loop()
        run = RemoteRun(job.id, job.attempts, report, loop.create_future(), stored.work)
        run.progress = job.progress
        run.dispatch = dispatch_of(job)
        self.runs[job.id] = run
        try:
            async with run.lock:
                if not _sent(stored, job):  # not sent yet (a restart does not resend)
                    await self._send_work(job, stored.work)
                    await run.save()
            return await run.future
        except asyncio.CancelledError:
            if not self.closing:  # cancelled or timed out: tell the worker that holds it
                self.spawn(self._notice_cancel(job.id, job.generation_id, job.attempts))
            raise
        finally:
            if self.runs.get(job.id) is run:
                del self.runs[job.id]

    async def _send_work(self, job: Job, checkpoint: Any) -> None:
        body = await self._work_body(job, checkpoint)
        for attempt in range(SEND_TRIES):
            try:
                dedup = dedup_id(job.id, job.attempts, dispatch_of(job))
                await self.queues.send("work", body, job.id, dedup)
                self.counters["dispatched"] += 1
                return
            except Exception as exc:
                if attempt + 1 == SEND_TRIES:
                    raise ProviderError(
                        f"cannot send the job to the SQS work queue: {exc}",
                        retryable=True,
                        code="sqs_error",
                    ) from exc
                log.warning("SQS send failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(SEND_RETRY.delay_s(attempt + 1, _JITTER))

    async def _work_body(self, job: Job, checkpoint: Any) -> str:
        """The work message; a job whose images make it too large for SQS sends its
        parameters through the board (`inputs/{generation_id}`, put before the send)."""
        work = Work(
            job=msgspec.structs.replace(job, checkpoint=None),
            attempt=job.attempts,
            checkpoint=checkpoint,
            sent_at=self.clock.now(),
        )
        body = encode(work)
        if len(body.encode()) > INLINE_WORK_BYTES and job.parameters.images():
            try:
                await self.board.put_input(job.generation_id, encode_params(job.parameters))
            except Exception as exc:
                raise ProviderError(
                    f"cannot store the job's images on S3 for the workers: {exc}",
                    retryable=True,
                    code="s3_error",
                ) from exc
            bare = msgspec.structs.replace(
                job.parameters, image=None, last_frame=None, reference_images=None
            )
            light = msgspec.structs.replace(job, checkpoint=None, parameters=bare)
            body = encode(msgspec.structs.replace(work, job=light, input_on_board=True))
        if len(body.encode()) > MAX_WORK_BYTES:
            raise ProviderError(
                f"the job is {len(body.encode())} bytes as a work message; SQS takes 256 KiB",
                retryable=False,
                code="too_large",
            )
        return body

    def job_ended(self, job: Job) -> None:
        """(On the loop) a job reached a terminal state: its input on the board goes."""
        if job.parameters.images():
            self.spawn(self._delete_input(job.generation_id))

    async def _delete_input(self, generation_id: str) -> None:
        try:
            await self.board.delete_input(generation_id)
        except Exception as exc:  # retention deletes it with the job
            log.warning("job input not deleted", extra={"error": repr(exc)})

    async def delete_videos(self, jobs: list[Job]) -> None:
        """Retention removed `jobs` (every one, with a result or not): their videos and
        their objects on the board (checkpoint, input, cancel notices) go."""
        for job in jobs:
            keys = [stored_video_key(job, "s3")]
            keys += [v.key for v in (job.result.videos or [])[1:]] if job.result else []
            try:
                for key in filter(None, keys):
                    await self.board.delete_key(key)
                await self.board.forget(job.generation_id)
            except Exception as exc:
                log.warning(
                    "could not delete a removed job's objects",
                    extra={"job_id": job.id, "error": repr(exc)},
                )

    async def _notice_cancel(self, job_id: str, generation_id: str, attempt: int) -> None:
        """Tell the worker, once the job is seen to have left this attempt (cancelled, or
        timed out): the actors stopping (a store reopening) cancel runs too, and then the
        job stays processing and its worker carries on."""
        for _ in range(NOTICE_LOOKS):
            await asyncio.sleep(0.1)
            try:
                # its record may be read from SQLite, behind a commit: off the loop
                read = self.read_job
                job = await asyncio.to_thread(read, job_id) if read is not None else None
            except Exception:  # the store is unavailable: not a cancel to pass on now
                return
            if job is None:
                return
            if job.status != "processing" or job.attempts != attempt:
                break
        else:
            return
        try:
            await self.board.cancel(generation_id, attempt)
        except Exception as exc:
            log.warning("cancel notice not stored", extra={"job_id": job_id, "error": repr(exc)})

    # -- what the status shows ----------------------------------------------------------

    def saw_worker(self, beat: Heartbeat) -> None:
        if beat.stopping:
            self.workers.pop(beat.worker_id, None)
        else:
            self.workers[beat.worker_id] = WorkerSeen(beat, time.time())

    def cluster_stats(self) -> dict[str, Any]:
        now = time.time()
        forget_s = max(60.0, 10 * self.config.worker_lease_s)
        for wid, seen in list(self.workers.items()):
            if now - seen.seen_at > forget_s:
                del self.workers[wid]
        return {
            "workers": [
                {
                    "id": wid,
                    "host": seen.beat.host,
                    "concurrency": seen.beat.concurrency,
                    "inFlight": len(seen.beat.jobs),
                    "lastHeartbeatAgoS": round(now - seen.seen_at, 1),
                    "sqsRequests": seen.beat.sqs_requests,
                }
                for wid, seen in sorted(self.workers.items())
            ],
            "queues": self.depths,
            "deadLetterDepth": self.depths.get("dlq", {}).get("visible", 0),
            "remoteInFlight": len(self.runs),
            "sqsRequests": self.queues.requests,
            **self.counters,
        }


def _stored(checkpoint: Any) -> _Stored:
    if isinstance(checkpoint, dict) and "attempt" in checkpoint:
        try:
            return msgspec.convert(checkpoint, _Stored)
        except msgspec.ValidationError:
            pass
    return _Stored()
