"""Committed job changes, told to whoever waits for them: subscribers (in order, on the
`job-events` thread), `wait`ers of one job (its terminal change), and `join` (woken by
every batch of events and whenever the queue becomes idle)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator

from genqueue.actors.bridge import post
from genqueue.errors import JobFailed
from genqueue.models import Job, JobResult

__all__ = ["JobChanges", "result_of"]

log = logging.getLogger("genqueue.jobqueue")
_BATCH = 1000  # events one wake-up of the events thread delivers, at most


class JobChanges:
    """Fans a queue's committed job changes out; `present` is how a reader sees a job."""

    def __init__(self, present: Callable[[Job], Job]):
        self._present = present
        self._subscribers: list[Callable[[Job], None]] = []
        self._events: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._watchers: dict[str, list[Callable[[Job], None]]] = {}  # job id -> `wait`s
        self._watch_lock = threading.Lock()
        self._changed = threading.Condition()
        self._changes = 0  # counts wake-ups of `join` (under `_changed`)

    # -- the queue's side ----------------------------------------------------------------------

    def start(self) -> None:
        self._events = queue.Queue()
        self._thread = threading.Thread(target=self._deliver, name="job-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._events.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def publish(self, job: Job) -> None:
        """A job's change was committed (on the store's releaser thread: cheap)."""
        if self._watchers and job.terminal:
            with self._watch_lock:
                watchers = list(self._watchers.get(job.id, ()))
            for finished in watchers:
                finished(job)
        if self._subscribers:  # `join` is woken by the queue's idle signal, not by events
            self._events.put(job)

    def changed_now(self) -> None:
        """Wake `join`: a job changed, or the queue became idle."""
        with self._changed:
            self._changes += 1
            self._changed.notify_all()

    # -- the readers' side ---------------------------------------------------------------------

    def subscribe(self, callback: Callable[[Job], None]) -> Callable[[], None]:
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    @contextlib.contextmanager
    def watching(self, job_id: str, finished: Callable[[Job], None]) -> Iterator[None]:
        """Call `finished(job)` (from the releaser thread) when the job's terminal change is
        committed, while inside this block."""
        with self._watch_lock:
            self._watchers.setdefault(job_id, []).append(finished)
        try:
            yield
        finally:
            with self._watch_lock:
                watchers = self._watchers.get(job_id, [])
                watchers.remove(finished)
                if not watchers:
                    self._watchers.pop(job_id, None)

    def wait_end(self, job_id: str, read: Callable[[], Job], timeout_s: float | None) -> Job:
        """The job's record once it is terminal (`read` gives it now; JobNotFound passes)."""
        done = threading.Event()
        ended: list[Job] = []

        def finished(job: Job) -> None:
            ended.append(job)
            done.set()

        with self.watching(job_id, finished):
            job = read()
            if job.terminal:
                return job
            if not done.wait(timeout_s):
                raise TimeoutError(f"job {job_id} has not finished after {timeout_s} s")
        return ended[0]

    async def await_end(
        self, job_id: str, read: Callable[[], Awaitable[Job]], timeout_s: float | None
    ) -> Job:
        """`wait_end` for asyncio code (never blocks the loop)."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[Job] = loop.create_future()

        def finished(job: Job) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                post(loop, _settle, ended, job)

        with self.watching(job_id, finished):
            job = await read()
            if job.terminal:
                return job
            try:
                return await asyncio.wait_for(ended, timeout_s)
            except TimeoutError:
                raise TimeoutError(f"job {job_id} has not finished after {timeout_s} s") from None

    def seen(self) -> int:
        """How many changes were announced so far (pass it to `wait_after`)."""
        with self._changed:
            return self._changes

    def wait_after(self, seen: int, timeout_s: float) -> None:
        """Until a change after `seen` (at once if there was one), at most `timeout_s`."""
        with self._changed:
            if self._changes == seen:
                self._changed.wait(timeout_s)

    def _deliver(self) -> None:
        """Deliver events in order; whatever queued up meanwhile goes out in one wake-up."""
        events = self._events
        while True:
            batch = [events.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < _BATCH:
                    batch.append(events.get_nowait())
            for stored in batch:
                if stored is None:
                    return
                job = self._present(stored)
                for callback in list(self._subscribers):
                    try:
                        callback(job)
                    except Exception:
                        log.exception("job event subscriber failed")
            self.changed_now()


def result_of(job: Job) -> JobResult:
    """A finished job's result; JobFailed if it failed or was cancelled."""
    if job.status != "completed" or job.result is None:
        raise JobFailed(job)
    return job.result


def _settle(future: asyncio.Future[Job], job: Job) -> None:
    if not future.done():
        future.set_result(job)
