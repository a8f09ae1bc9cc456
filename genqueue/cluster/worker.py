"""`python main.py worker`: runs dispatched attempts with the one-machine generation code.

    receive (only while a slot is free) -> the attempt (attempt.py) -> the outcome on the
    events queue -> delete the work message

The worker holds each message's lease, renewed by its heartbeats (lease.py). On SIGTERM
it stops receiving, lets a paid start in flight reach its checkpoint, then hands back what
it holds (visibility 0) and exits.

A paid start is never cut silently: SIGTERM waits for it as long as a start may take (two
calls, a 401 refreshing the token, each within the client's request timeout, plus the
checkpoint's writes); a lost lease stops the attempt only once its start has settled (its
checkpoint is on the board for whoever holds the message now); and a start cut anyway
(the grace ran out) is counted as an ambiguous start and logged (starts.py).
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
from genqueue.cluster import attempt
from genqueue.cluster.lease import beat, heartbeat_loop
from genqueue.cluster.messages import Event, RateLimited, decode_work, encode
from genqueue.cluster.starts import (
    DEFAULT_REQUEST_TIMEOUT_S,
    RUN,
    ClientSpy,
    WorkerRun,
    start_grace_s,
)
from genqueue.cluster.transport import Board, Queues, Received
from genqueue.config import Config
from genqueue.retry import RetryPolicy

__all__ = ["SEND_TRIES", "Worker"]

log = logging.getLogger("genqueue.worker")
SEND_TRIES = 8
# a failed event send: 0.2 s, doubling, at most 5 s, jittered by half
_JITTER = random.Random()  # the retries' jitter (not the delays' rule: that is SEND_RETRY)
SEND_RETRY = RetryPolicy(initial_interval_s=0.2, maximum_interval_s=5.0, jitter=0.5)


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
            beats = asyncio.create_task(heartbeat_loop(self))
            await stop.wait()
            await self._stop_receiving(receiver)
            await self._hand_back_all()
            beats.cancel()
            await asyncio.gather(beats, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.send(beat(self, stopping=True), self.id)
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

    # -- one attempt, in a slot ---------------------------------------------------------

    async def _execute(self, run: WorkerRun) -> None:
        job_id = run.work.job.id
        RUN.set(run)  # (this task's own context) the Veo client spy marks its starts
        try:
            try:
                outcome = await attempt.generate(self, run)
            except asyncio.CancelledError:
                if run.stop_reason != "cancelled":
                    return  # handed back or lease lost: no outcome, the message stays
                outcome = attempt.outcome(self, run, error=attempt.cancelled())
            except attempt.CancelledByCoordinator:
                outcome = attempt.outcome(self, run, error=attempt.cancelled())
            run.closing = True
            if outcome is not None:
                await self.send(outcome, job_id)  # the outcome is out before the delete
            await self.queues.delete("work", run.handle)
        except Exception as exc:
            log.error("attempt not closed", extra={"job_id": job_id, "error": repr(exc)})
        finally:
            self.runs.pop(job_id, None)
            self._freed.set()

    async def send(self, event: Event, group: str, dedup: str = "") -> None:
        """`event` on the events queue, tried SEND_TRIES times (one dedup id for all)."""
        body = encode(event)
        dedup = dedup or uuid.uuid4().hex  # one id for every try of this send
        for tries in range(SEND_TRIES):
            try:
                await self.queues.send("events", body, group, dedup)
                return
            except Exception as exc:
                if tries + 1 == SEND_TRIES:
                    raise
                log.warning("SQS send failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(SEND_RETRY.delay_s(tries + 1, _JITTER))

    # -- paid starts in flight, 429s, SIGTERM ----------------------------------------------

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
        task = asyncio.get_running_loop().create_task(self.send(event, self.id))
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
