"""A worker's leases and heartbeats.

The lease is the work message's visibility: `worker_lease_s` at receive, renewed every
third of it, with a heartbeat event carrying each job's progress. A lease SQS refuses to
renew is lost (another worker may hold the message now): its attempt stops, once a paid
start in flight has settled. The board's cancel notices stop their attempts too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from genqueue.cluster.messages import Event, Heartbeat, JobBeat
from genqueue.cluster.starts import WorkerRun
from genqueue.cluster.transport import Board, Queues

__all__ = ["LeaseHolder", "beat", "heartbeat_loop"]

log = logging.getLogger("genqueue.worker")


class LeaseHolder(Protocol):
    """What the heartbeats use of their worker."""

    id: str
    host: str
    concurrency: int
    queues: Queues
    board: Board
    runs: dict[str, WorkerRun]

    async def send(self, event: Event, group: str, dedup: str = "") -> None: ...


async def heartbeat_loop(worker: LeaseHolder) -> None:
    """Every third of the lease: renew the leases, beat, stop what the board cancelled."""
    interval_s = max(0.5, worker.queues.lease_s / 3)
    with contextlib.suppress(Exception):  # the coordinator lists this worker at once
        await worker.send(beat(worker), worker.id)
    while True:
        await asyncio.sleep(interval_s)
        runs = list(worker.runs.values())
        try:
            await _renew(worker.queues, runs)
            await worker.send(beat(worker), worker.id)
            cancels = await worker.board.cancels() if runs else set()
            for r in runs:
                if (r.work.job.generation_id, r.work.attempt) in cancels:
                    r.stop("cancelled")
        except Exception as exc:
            log.warning("heartbeat failed", extra={"error": repr(exc)})


async def _renew(queues: Queues, runs: list[WorkerRun]) -> None:
    asked = time.monotonic()
    refused = await queues.extend("work", [r.handle for r in runs], queues.lease_s)
    for r in runs:
        if r.handle in refused and not r.closing:  # (closing: deleted meanwhile)
            log.warning("lease lost", extra={"job_id": r.work.job.id})
            r.stop("lease_lost")
        elif r.handle not in refused:
            r.lease_until = asked + queues.lease_s


def beat(worker: LeaseHolder, *, stopping: bool = False) -> Heartbeat:
    return Heartbeat(
        worker_id=worker.id,
        host=worker.host,
        concurrency=worker.concurrency,
        jobs=tuple(
            JobBeat(r.work.job.id, r.work.attempt, r.progress) for r in worker.runs.values()
        ),
        sent_at=time.time(),
        stopping=stopping,
        sqs_requests=worker.queues.requests,
    )
