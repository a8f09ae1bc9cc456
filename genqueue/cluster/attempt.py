"""One dispatched attempt on a worker: the board's checkpoint, the generation workflow,
its checkpoints out, and the outcome it ends with.

    read the board's checkpoint -> the job's input (from the board, if it travelled there)
    -> the generation workflow (GenerationService, as `serve` runs it) -> an Outcome

A checkpoint goes to the board (S3) and then to the events queue before the workflow goes
on, so a worker that receives the message after this one died reads it and polls the same
Veo operation. The worker (worker.py) holds the message, its lease and its slot.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
import uuid
from typing import Any, Protocol

import msgspec

from genqueue.actors.generation_service import GenerationService
from genqueue.cluster.messages import Checkpoint, ErrorInfo, Event, Outcome, Work, decode_params
from genqueue.cluster.starts import WorkerRun
from genqueue.cluster.transport import Board
from genqueue.errors import InvalidRequest, ProviderError
from genqueue.models import Job
from genqueue.retry import RetryPolicy

__all__ = ["AttemptHost", "CancelledByCoordinator", "cancelled", "generate", "outcome", "reporter"]

log = logging.getLogger("genqueue.worker")
# a checkpoint not stored yet: tried again 0.2 s later, doubling up to 5 s, jittered by
# half, for as long as the lease holds (the lease, not a count, ends it)
CHECKPOINT_RETRY = RetryPolicy(
    initial_interval_s=0.2, maximum_interval_s=5.0, maximum_attempts=2**31, jitter=0.5
)
_JITTER = random.Random()


class CancelledByCoordinator(Exception):
    """The board says the coordinator cancelled this attempt before it began."""


class AttemptHost(Protocol):
    """What an attempt uses of its worker."""

    id: str
    board: Board
    service: GenerationService

    async def send(self, event: Event, group: str, dedup: str = "") -> None: ...

    def start_settled(self, run: WorkerRun | None) -> None: ...


async def generate(host: AttemptHost, run: WorkerRun) -> Outcome | None:
    """The attempt's outcome; None for a late message of an attempt already superseded."""
    work = run.work
    if await host.board.is_cancelled(work.job.generation_id, work.attempt):
        raise CancelledByCoordinator
    # Keyed by the generation id, unique per job record: a client id reused after
    # retention must not resume (or be dropped by) its predecessor's checkpoint.
    latest = await host.board.get_checkpoint(work.job.generation_id)
    if latest is not None and latest.attempt > work.attempt:
        return None  # a message of an earlier attempt, delivered late: drop it
    # The board's is the newest checkpoint of this generation (written before any
    # event), even of an earlier attempt whose Checkpoint event never reached the
    # coordinator: it may name a paid operation, which this attempt resumes.
    ckpt = latest.checkpoint if latest is not None else None
    ckpt = ckpt if ckpt is not None else work.checkpoint
    job = msgspec.structs.replace(work.job, checkpoint=ckpt, attempts=work.attempt)
    try:
        job = await _with_input(host.board, job, work)
        result = await host.service(job, reporter(host, run))
    except Exception as exc:
        return outcome(host, run, error=_error_info(exc, work.job.id))
    return outcome(host, run, result=result)


def _error_info(exc: Exception, job_id: str) -> ErrorInfo:
    """How the coordinator hears of a failed attempt."""
    if isinstance(exc, ProviderError):
        return ErrorInfo(
            message=exc.message,
            retryable=exc.retryable,
            status=exc.status,
            retry_after_s=exc.retry_after_s,
            code=exc.code,
        )
    if isinstance(exc, InvalidRequest):
        return ErrorInfo(message=exc.message, retryable=False, code="invalid_request")
    log.error("generation raised", extra={"job_id": job_id}, exc_info=exc)
    message = f"internal error: {type(exc).__name__}: {exc}"
    return ErrorInfo(message=message, retryable=False)


async def _with_input(board: Board, job: Job, work: Work) -> Job:
    """The job with its parameters from the board, when they travelled there."""
    if not work.input_on_board:
        return job
    try:
        data = await board.get_input(job.generation_id)
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


def reporter(host: AttemptHost, run: WorkerRun) -> Any:
    """The workflow's `report`: progress rides on the heartbeats; a checkpoint is stored."""

    async def report(progress: int | None = None, checkpoint: Any = None) -> None:
        if progress is not None:
            run.progress = max(run.progress, int(progress))
        if checkpoint is None:
            return  # progress rides on the next heartbeat
        await _store_checkpoint(host, run, checkpoint, progress)
        host.start_settled(run)

    return report


async def _store_checkpoint(
    host: AttemptHost, run: WorkerRun, checkpoint: Any, progress: Any
) -> None:
    """On the board, then on the events queue; retried while the lease holds (the
    checkpoint may name a paid operation: failing the attempt would lose it for the
    coordinator), then `checkpoint_failed`. The board's copy alone is enough for the
    next attempt, which reads it."""
    work = run.work
    event = Checkpoint(
        job_id=work.job.id,
        attempt=work.attempt,
        worker_id=host.id,
        checkpoint=checkpoint,
        progress=progress,
    )
    dedup, on_board = uuid.uuid4().hex, False
    for tries in itertools.count(1):
        try:
            if not on_board:
                await host.board.put_checkpoint(work.job.generation_id, work.attempt, checkpoint)
                on_board = True
                host.start_settled(run)  # a resuming worker finds it: SIGTERM may go on
            await host.send(event, work.job.id, dedup)
            return
        except Exception as exc:
            if time.monotonic() + CHECKPOINT_RETRY.delay_s(tries) >= run.lease_until:
                raise ProviderError(
                    f"the checkpoint could not be stored: {exc}",
                    retryable=True,
                    code="checkpoint_failed",
                ) from exc
            log.warning(
                "checkpoint not stored yet, retrying while the lease holds",
                extra={"job_id": work.job.id, "on_board": on_board, "error": repr(exc)},
            )
            await asyncio.sleep(CHECKPOINT_RETRY.delay_s(tries, _JITTER))


def outcome(host: AttemptHost, run: WorkerRun, **kw: Any) -> Outcome:
    job = run.work.job
    return Outcome(
        job_id=job.id,
        attempt=run.work.attempt,
        worker_id=host.id,
        generation_id=job.generation_id,
        **kw,
    )


def cancelled() -> ErrorInfo:
    return ErrorInfo(message="cancelled", retryable=False, code="cancelled")
