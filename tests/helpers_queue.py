"""Shared by the queue tests: a scriptable processor, a job watcher and a queue factory.

`Recorder` is a processor that records every call (job id, attempt, clock time),
keeps the set of coroutines running right now (and the most it ever saw, overall
and per user), can hold a job until the test releases it (a per-job asyncio event
set from the test thread), and can fail an attempt as the test scripts it. Tests
wait on its condition variable, never on a fixed sleep.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import WAIT_S, eventually

from genqueue import Config, Job, JobNotFound, JobQueue, JobResult
from genqueue.clock import Clock

# What an attempt does: "ok", "hold" (until released), or an exception to raise.
Step = str | BaseException


@dataclass(frozen=True)
class Call:
    job_id: str
    user_id: str
    attempt: int
    at: float  # the injected clock's time when the processor was called
    checkpoint: Any


class Recorder:
    """A processor that records, holds and fails jobs as a test tells it."""

    def __init__(self, clock: Clock | None = None, *, hold_all: bool = False):
        self.clock = clock
        self.hold_all = hold_all
        self.cv = threading.Condition()
        self.calls: list[Call] = []
        self.running: dict[str, str] = {}  # job id -> user id, coroutines alive now
        self.max_running = 0
        self.max_per_user: dict[str, int] = {}
        self.cancelled: list[str] = []
        self.script: dict[str, list[Step]] = {}  # job id -> one step per attempt
        self.default: Step = "ok"
        self.checkpoint: Any = None  # reported (durably) before holding, when set
        self._released: set[str] = set()
        self._gates: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}

    # -- the processor ---------------------------------------------------------------------

    async def __call__(self, job: Job, report: Callable[..., Any]) -> JobResult:
        now = self.clock.now() if self.clock is not None else time.time()
        with self.cv:
            self.calls.append(Call(job.id, job.user_id, job.attempts, now, job.checkpoint))
            self.running[job.id] = job.user_id
            self.max_running = max(self.max_running, len(self.running))
            mine = sum(1 for u in self.running.values() if u == job.user_id)
            self.max_per_user[job.user_id] = max(self.max_per_user.get(job.user_id, 0), mine)
            steps = self.script.get(job.id)
            step = steps.pop(0) if steps else ("hold" if self.hold_all else self.default)
            self.cv.notify_all()
        try:
            if isinstance(step, BaseException):
                raise step
            if step == "hold":
                if self.checkpoint is not None:
                    await report(progress=50, checkpoint=self.checkpoint)
                await self._gate(job.id)
            return JobResult(video_url=f"memory://{job.id}.mp4", duration=8)
        except asyncio.CancelledError:
            with self.cv:
                self.cancelled.append(job.id)
            raise
        finally:
            with self.cv:
                self.running.pop(job.id, None)
                self.cv.notify_all()

    async def _gate(self, job_id: str) -> None:
        event = asyncio.Event()
        with self.cv:
            if job_id in self._released:
                return
            self._gates[job_id] = (asyncio.get_running_loop(), event)
        try:
            await event.wait()
        finally:
            with self.cv:
                self._gates.pop(job_id, None)

    # -- the test's side ---------------------------------------------------------------------

    def release(self, *job_ids: str) -> None:
        """Let held jobs finish (now, or as soon as they are called)."""
        with self.cv:
            for job_id in job_ids:
                self._released.add(job_id)
                gate = self._gates.get(job_id)
                if gate is not None:
                    gate[0].call_soon_threadsafe(gate[1].set)

    def release_all(self) -> None:
        with self.cv:
            ids = list(self._gates)
            self.hold_all = False
        self.release(*ids)

    def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
        with self.cv:
            if not self.cv.wait_for(predicate, timeout_s):
                raise AssertionError(
                    f"timed out waiting for {what}; calls={len(self.calls)} "
                    f"running={sorted(self.running)}"
                )

    def wait_calls(self, n: int, timeout_s: float = WAIT_S) -> None:
        self.wait(lambda: len(self.calls) >= n, f"{n} processor calls", timeout_s)

    def wait_running(self, *job_ids: str) -> None:
        self.wait(lambda: all(j in self.running for j in job_ids), f"{job_ids} running")

    def called(self, job_id: str) -> list[Call]:
        with self.cv:
            return [c for c in self.calls if c.job_id == job_id]

    def order(self) -> list[str]:
        with self.cv:
            return [c.job_id for c in self.calls]


class Watcher:
    """Follows every job event of a queue (`subscribe`), so tests can wait for states."""

    def __init__(self, queue: JobQueue):
        self.cv = threading.Condition()
        self.latest: dict[str, Job] = {}
        self.terminal_events: dict[str, list[str]] = {}
        queue.subscribe(self._on_event)

    def _on_event(self, job: Job) -> None:
        with self.cv:
            self.latest[job.id] = job
            if job.terminal:
                self.terminal_events.setdefault(job.id, []).append(job.status)
            self.cv.notify_all()

    def wait_status(self, job_id: str, *statuses: str, timeout_s: float = WAIT_S) -> Job:
        with self.cv:
            ok = self.cv.wait_for(
                lambda: job_id in self.latest and self.latest[job_id].status in statuses,
                timeout_s,
            )
            seen = self.latest.get(job_id)
            assert ok, f"job {job_id} never reached {statuses}; last seen {seen}"
            return self.latest[job_id]


def queue_alarm_at(queue: JobQueue) -> float | None:
    """When the QueueActor's (persisted) alarm will fire next: white-box, for the
    tests that must know the queue has decided to wait rather than start a job."""
    from genqueue.actors.runtime import AlarmRecord

    assert queue.system is not None
    rec = queue.system.alarms.get("queue/main", AlarmRecord)
    return None if rec is None else rec.at


class QueueFactory:
    """Opens queues on folders under a test's tmp_path; closes every one of them."""

    def __init__(self, root: Path):
        self.root = root
        self.opened: list[JobQueue] = []

    def open(
        self,
        processor: Any,
        *,
        clock: Clock | None = None,
        folder: str = "data",
        **settings: Any,
    ) -> JobQueue:
        settings.setdefault("synchronous", "NORMAL")  # survives a process crash; fast
        config = Config(data_dir=str(self.root / folder), **settings)
        queue = JobQueue(config, processor, clock=clock)
        self.opened.append(queue)
        return queue.open()

    def close(self, queue: JobQueue) -> None:
        if queue in self.opened:
            self.opened.remove(queue)
            queue.close()

    def close_all(self) -> None:
        while self.opened:
            self.opened.pop().close()


@contextmanager
def queue_factory(root: Path) -> Iterator[QueueFactory]:
    factory = QueueFactory(root)
    try:
        yield factory
    finally:
        factory.close_all()


def request(prompt: str = "a cat surfing", **fields: Any) -> dict[str, Any]:
    return {"prompt": prompt, **fields}


poll_until = eventually  # the queue tests' name for it


def removed(queue: JobQueue, job_id: str) -> bool:
    """Whether the queue no longer has the job (retention removed it)."""
    try:
        queue.get(job_id)
    except JobNotFound:
        return True
    return False
