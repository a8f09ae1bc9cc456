"""`python main.py worker`: runs dispatched attempts with the one-machine generation code.

    receive (only while a slot is free) -> read the board's checkpoint -> the generation
    workflow (GenerationService, as `serve` runs it) -> the outcome on the events queue ->
    delete the work message

The lease is the work message's visibility: `worker_lease_s` at receive, renewed every
third of it (with a heartbeat event carrying each job's progress). A checkpoint goes to
the board (S3) and then to the events queue before the workflow goes on, so a worker that
receives the message after this one died reads it and polls the same Veo operation. On
SIGTERM the worker stops receiving, lets a paid start in flight reach its checkpoint, then
hands back what it holds (visibility 0) and exits.

A paid start is never cut silently: SIGTERM waits for it as long as a start may take (two
calls, a 401 refreshing the token, each within the client's request timeout, plus the
checkpoint's writes); a lost lease stops the attempt only once its start has settled (its
checkpoint is on the board for whoever holds the message now); and a start cut anyway
(the grace ran out) is counted as an ambiguous start and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from typing import Any

import msgspec

from genqueue.actors.generation_service import GenerationService
from genqueue.cluster.messages import (
    Checkpoint,
    ErrorInfo,
    Event,
    Heartbeat,
    JobBeat,
    Outcome,
    RateLimited,
    Work,
    decode_params,
    decode_work,
    encode,
)
from genqueue.cluster.starts import (
    DEFAULT_REQUEST_TIMEOUT_S,
    RUN,
    ClientSpy,
    WorkerRun,
    start_grace_s,
)
from genqueue.cluster.transport import Board, Queues, Received
from genqueue.config import Config
from genqueue.errors import InvalidRequest, ProviderError
from genqueue.models import Job

__all__ = ["Worker"]

log = logging.getLogger("genqueue.worker")
SEND_TRIES = 8
CHECKPOINT_RETRY_MAX_S = 5.0


class _CancelledByCoordinator(Exception):
    pass


class Worker:
    def __init__(self, config: Config, *, concurrency: int | None = None, worker_id: str = ""):
        self.config = config
        self.concurrency = concurrency or config.worker_concurrency
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.host = socket.gethostname()
        self.queues = Queues(config)
        self.board = Board(config)
        self.service = GenerationService(config)
        self.runs: dict[str, WorkerRun] = {}
        self._freed = asyncio.Event()
        self._last_429: dict[str, float] = {}  # provider -> when its last 429 was told
        self._stopping = False
        self._calm = asyncio.Event()  # set when a start in flight reached its checkpoint
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refused: list[asyncio.Task[None]] = []  # hand-backs of starts refused

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set; then hand back what is held and return."""
        async with contextlib.AsyncExitStack() as stack:
            await self.service.start()
            stack.push_async_callback(self.service.close)
            self._spy_rate_limits()
            await self.queues.start()
            stack.push_async_callback(self.queues.close)
            await self.board.start()
            stack.push_async_callback(self.board.close)
            log.info("worker started", extra={"worker_id": self.id, "slots": self.concurrency})
            receiver = asyncio.create_task(self._receive_loop())
            beats = asyncio.create_task(self._heartbeat_loop())
            await stop.wait()
            await self._stop_receiving(receiver)
            await self._hand_back_all()
            beats.cancel()
            await asyncio.gather(beats, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._send(self._beat(stopping=True), self.id)
            log.info("worker stopped", extra={"worker_id": self.id})

    # -- receiving ---------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while not self._stopping:
            free = self.concurrency - len(self.runs)
            if free <= 0:
                self._freed.clear()
                await self._freed.wait()
                continue
            try:
                msgs = await self.queues.receive(
                    "work", free, self.config.sqs_wait_s, self.queues.lease_s
                )
            except Exception as exc:
                log.warning("SQS receive failed", extra={"error": repr(exc)})
                await asyncio.sleep(1)
                continue
            if self._stopping:  # received while SIGTERM came: straight back
                for m in msgs:
                    with contextlib.suppress(Exception):
                        await self.queues.set_visibility("work", m.handle, 0)
                return
            for m in msgs:
                self._accept(m)

    async def _stop_receiving(self, receiver: asyncio.Task[None]) -> None:
        """Let the long poll under way end (what it brings goes straight back): a poll cut
        short could leave messages SQS already handed out invisible for a whole lease."""
        self._stopping = True
        self._freed.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(receiver), self.config.sqs_wait_s + 5)
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)

    def _accept(self, m: Received) -> None:
        try:
            work = decode_work(m.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Left alone: after `sqs_max_receives` receives SQS moves it to the DLQ.
            log.error("undecodable work message", extra={"error": str(exc)})
            return
        if work.job.id in self.runs:
            return  # a duplicate delivery of what this worker runs
        run = WorkerRun(work, m.handle, lease_until=time.monotonic() + self.queues.lease_s)
        self.runs[work.job.id] = run
        run.task = asyncio.create_task(self._execute(run))

    # -- one attempt -----------------------------------------------------------------------

    async def _execute(self, run: WorkerRun) -> None:
        job_id = run.work.job.id
        RUN.set(run)  # (this task's own context) the Veo client spy marks its starts
        try:
            try:
                outcome = await self._generate(run)
            except asyncio.CancelledError:
                if run.stop_reason != "cancelled":
                    return  # handed back or lease lost: no outcome, the message stays
                outcome = self._outcome(run, error=_cancelled())
            except _CancelledByCoordinator:
                outcome = self._outcome(run, error=_cancelled())
            run.closing = True
            if outcome is not None:
                await self._send(outcome, job_id)  # the outcome is out before the delete
            await self.queues.delete("work", run.handle)
        except Exception as exc:
            log.error("attempt not closed", extra={"job_id": job_id, "error": repr(exc)})
        finally:
            self.runs.pop(job_id, None)
            self._freed.set()

    async def _generate(self, run: WorkerRun) -> Outcome | None:
        work = run.work
        job_id = work.job.id
        if await self.board.is_cancelled(work.job.generation_id, work.attempt):
            raise _CancelledByCoordinator
        # Keyed by the generation id, unique per job record: a client id reused after
        # retention must not resume (or be dropped by) its predecessor's checkpoint.
        latest = await self.board.get_checkpoint(work.job.generation_id)
        if latest is not None and latest.attempt > work.attempt:
            return None  # a message of an earlier attempt, delivered late: drop it
        # The board's is the newest checkpoint of this generation (written before any
        # event), even of an earlier attempt whose Checkpoint event never reached the
        # coordinator: it may name a paid operation, which this attempt resumes.
        ckpt = latest.checkpoint if latest is not None else None
        ckpt = ckpt if ckpt is not None else work.checkpoint
        job = msgspec.structs.replace(work.job, checkpoint=ckpt, attempts=work.attempt)
        try:
            job = await self._with_input(job, work)
            result = await self.service(job, self._reporter(run))
        except ProviderError as exc:
            return self._outcome(
                run,
                error=ErrorInfo(
                    message=exc.message,
                    retryable=exc.retryable,
                    status=exc.status,
                    retry_after_s=exc.retry_after_s,
                    code=exc.code,
                ),
            )
        except InvalidRequest as exc:
            info = ErrorInfo(message=exc.message, retryable=False, code="invalid_request")
            return self._outcome(run, error=info)
        except Exception as exc:
            log.exception("generation raised", extra={"job_id": job_id})
            message = f"internal error: {type(exc).__name__}: {exc}"
            return self._outcome(run, error=ErrorInfo(message=message, retryable=False))
        return self._outcome(run, result=result)

    async def _with_input(self, job: Job, work: Work) -> Job:
        """The job with its parameters from the board, when they travelled there."""
        if not work.input_on_board:
            return job
        try:
            data = await self.board.get_input(job.generation_id)
        except Exception as exc:
            raise ProviderError(
                f"the job's input could not be read from S3: {exc}",
                retryable=True,
                code="s3_error",
            ) from exc
        if data is None:  # the job ended (its input deleted): this message came late
            raise ProviderError(
                "the job's input is no longer on the board (the job ended)",
                retryable=False,
                code="input_missing",
            )
        return msgspec.structs.replace(job, parameters=decode_params(data))

    def _reporter(self, run: WorkerRun) -> Any:
        async def report(progress: int | None = None, checkpoint: Any = None) -> None:
            if progress is not None:
                run.progress = max(run.progress, int(progress))
            if checkpoint is None:
                return  # progress rides on the next heartbeat
            await self._store_checkpoint(run, checkpoint, progress)
            self.start_settled(run)

        return report

    async def _store_checkpoint(self, run: WorkerRun, checkpoint: Any, progress: Any) -> None:
        """On the board, then on the events queue; retried while the lease holds (the
        checkpoint may name a paid operation: failing the attempt would lose it for the
        coordinator), then `checkpoint_failed`. The board's copy alone is enough for the
        next attempt, which reads it."""
        work = run.work
        event = Checkpoint(
            job_id=work.job.id,
            attempt=work.attempt,
            worker_id=self.id,
            checkpoint=checkpoint,
            progress=progress,
        )
        dedup, on_board, delay_s = uuid.uuid4().hex, False, 0.2
        while True:
            try:
                if not on_board:
                    await self.board.put_checkpoint(
                        work.job.generation_id, work.attempt, checkpoint
                    )
                    on_board = True
                    self.start_settled(run)  # a resuming worker finds it: SIGTERM may go on
                await self._send(event, work.job.id, dedup)
                return
            except Exception as exc:
                if time.monotonic() + delay_s >= run.lease_until:
                    raise ProviderError(
                        f"the checkpoint could not be stored: {exc}",
                        retryable=True,
                        code="checkpoint_failed",
                    ) from exc
                log.warning(
                    "checkpoint not stored yet, retrying while the lease holds",
                    extra={"job_id": work.job.id, "on_board": on_board, "error": repr(exc)},
                )
                await asyncio.sleep(delay_s * random.uniform(0.5, 1.5))
                delay_s = min(CHECKPOINT_RETRY_MAX_S, 2 * delay_s)

    def _outcome(self, run: WorkerRun, **kw: Any) -> Outcome:
        job = run.work.job
        return Outcome(
            job_id=job.id,
            attempt=run.work.attempt,
            worker_id=self.id,
            generation_id=job.generation_id,
            **kw,
        )

    async def _send(self, event: Event, group: str, dedup: str = "") -> None:
        body = encode(event)
        dedup = dedup or uuid.uuid4().hex  # one id for every try of this send
        for attempt in range(SEND_TRIES):
            try:
                await self.queues.send("events", body, group, dedup)
                return
            except Exception as exc:
                if attempt + 1 == SEND_TRIES:
                    raise
                log.warning("SQS send failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt) * random.uniform(0.5, 1.5))

    # -- the lease, heartbeats, cancels, 429s --------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval_s = max(0.5, self.queues.lease_s / 3)
        with contextlib.suppress(Exception):  # the coordinator lists this worker at once
            await self._send(self._beat(), self.id)
        while True:
            await asyncio.sleep(interval_s)
            runs = list(self.runs.values())
            try:
                asked = time.monotonic()
                refused = await self.queues.extend(
                    "work", [r.handle for r in runs], self.queues.lease_s
                )
                for r in runs:
                    if r.handle in refused and not r.closing:  # (closing: deleted meanwhile)
                        log.warning("lease lost", extra={"job_id": r.work.job.id})
                        r.stop("lease_lost")
                    elif r.handle not in refused:
                        r.lease_until = asked + self.queues.lease_s
                await self._send(self._beat(), self.id)
                cancels = await self.board.cancels() if runs else set()
                for r in runs:
                    if (r.work.job.generation_id, r.work.attempt) in cancels:
                        r.stop("cancelled")
            except Exception as exc:
                log.warning("heartbeat failed", extra={"error": repr(exc)})

    def _beat(self, *, stopping: bool = False) -> Heartbeat:
        return Heartbeat(
            worker_id=self.id,
            host=self.host,
            concurrency=self.concurrency,
            jobs=tuple(
                JobBeat(r.work.job.id, r.work.attempt, r.progress) for r in self.runs.values()
            ),
            sent_at=time.time(),
            stopping=stopping,
            sqs_requests=self.queues.requests,
        )

    def _spy_rate_limits(self) -> None:
        for provider, actor in self.service.actors.items():  # every provider's 429s count
            actor.client = ClientSpy(actor.client, self, provider)

    def start_settled(self, run: WorkerRun | None) -> None:
        """A paid start ended: checkpointed, or refused (nothing to lose)."""
        if run is not None and run.starting:
            run.starting = False
            self._calm.set()
            if run.stop_after_start is not None:
                run.stop(run.stop_after_start)

    def _grace_s(self) -> float:
        """As long as the slowest provider's start may take."""
        timeouts = [
            getattr(actor.client, "request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S)
            for actor in self.service.actors.values()
        ]
        return start_grace_s(float(max(timeouts, default=DEFAULT_REQUEST_TIMEOUT_S)))

    def _count_cut_start(self, run: WorkerRun) -> None:
        """A start stopped before its checkpoint: maybe paid, its operation unknown."""
        actor = self.service.actors.get(run.work.job.provider)
        if actor is not None:
            actor.ambiguous_starts += 1
        log.warning(
            "a paid start was stopped before its checkpoint: counted as an ambiguous start",
            extra={"job_id": run.work.job.id, "attempt": run.work.attempt},
        )

    def saw_429(self, retry_after_s: float | None, provider: str = "veo3") -> None:
        now = time.monotonic()
        if now - self._last_429.get(provider, 0.0) < 1.0:
            return  # one notice a second is enough to pause the provider
        self._last_429[provider] = now
        event = RateLimited(
            worker_id=self.id,
            retry_after_s=retry_after_s or 5.0,
            provider=provider,
            seen_at=time.time(),
        )
        task = asyncio.get_running_loop().create_task(self._send(event, self.id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def refuse_start(self, run: WorkerRun) -> bool:
        """Once stopping, a start not yet sent never begins (the grace could end inside it,
        maybe paid and its operation lost): its attempt is handed back unpaid instead."""
        if not self._stopping or run.stop_reason is not None:
            return False
        run.stop_reason = "handback"
        self._refused.append(asyncio.get_running_loop().create_task(self._hand_back(run)))
        return True

    async def _hand_back_all(self) -> None:
        """Wait until no paid start is between its call and its checkpoint (no new one
        begins: `refuse_start`), then stop every attempt and make each message visible."""
        self._stopping = True
        deadline = time.monotonic() + self._grace_s()
        while any(r.starting for r in self.runs.values()) and time.monotonic() < deadline:
            self._calm.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._calm.wait(), deadline - time.monotonic())
        runs = [
            r
            for r in self.runs.values()
            if r.task is not None and not r.task.done() and r.stop_reason != "handback"
        ]
        if runs:
            log.info("handing back", extra={"worker_id": self.id, "jobs": len(runs)})
        for run in runs:
            if run.starting:
                self._count_cut_start(run)
            run.stop("handback")
        # (the runs whose start was refused are being handed back on their own)
        await asyncio.gather(*(self._hand_back(r) for r in runs), *self._refused)

    async def _hand_back(self, run: WorkerRun) -> None:
        assert run.task is not None
        await asyncio.gather(run.task, return_exceptions=True)
        if run.stop_reason != "handback":
            return  # it ended by itself meanwhile
        try:
            await self.queues.set_visibility("work", run.handle, 0)
        except Exception as exc:  # the lease runs out instead
            log.warning("hand back failed", extra={"job_id": run.work.job.id, "error": repr(exc)})


def _cancelled() -> ErrorInfo:
    return ErrorInfo(message="cancelled", retryable=False, code="cancelled")
