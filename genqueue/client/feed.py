"""`subscribe` over HTTP: the job changes of `GET /api/events` (Server-Sent Events) passed
to a callback, the stream reopened after it drops.

What a subscriber gets, against what `JobQueue.subscribe` gives (every stored change):

- Each job's changes in order, ending with its terminal one. The server coalesces changes
  that reach it together (newest per job), so an intermediate change may be skipped; the
  newest state of each job is never skipped while the stream is up.
- The stream's opening `snapshot` (the queue's figures, the newest jobs) is not delivered:
  changes after `subscribe` returns are.
- After a drop, the stream is reopened (waits from `RetryPolicy.delay_s`, reset by each
  stream that opens). The new stream's snapshot is compared with what was seen: a job in
  it that changed meanwhile is delivered as it is now, and so is every job seen before
  that had not ended and is not in the snapshot (read one by one, 8 at a time). A change
  made meanwhile to a job this subscription had never seen (not among the first
  snapshot's newest jobs, no change since) and that is not among the new snapshot's
  newest jobs is not delivered; its next change is.
- An event no newer than the one delivered for its job (a stale or repeated one) is not
  delivered again.

A callback that raises is logged (`genqueue.client`) and the stream goes on, as
JobQueue's subscribers do. A refused key (401/403) or an answer that is not genqueue's
ends the subscription (logged), as do `maximum_attempts` failures in a row (the drop, then
the reopens that failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable

import msgspec

from genqueue.client import answers
from genqueue.errors import GenqueueError, JobNotFound, StorageError, Unreachable
from genqueue.models import Job
from genqueue.retry import RetryPolicy
from genqueue.wire import PublicJob

__all__ = ["RECONNECT", "StreamsFull", "Subscription"]

log = logging.getLogger("genqueue.client")

# From 0.1 s, doubling, at most 5 s apart; the subscription ends after 30 failures in a
# row (about two minutes without a server).
RECONNECT = RetryPolicy(
    initial_interval_s=0.1, backoff_coefficient=2.0, maximum_interval_s=5.0, maximum_attempts=30
)
_FINISHED_KEPT = 10_000  # ended jobs whose last change is remembered (stale events)
_CATCH_UP_AT_ONCE = 8  # reads of jobs not in a new stream's snapshot in flight

Events = Callable[[], AsyncGenerator[tuple[str, bytes], None]]
_Mark = tuple[float, float, bool, str, int, int]  # created, updated, ended, status, ...


class StreamsFull(GenqueueError):
    """The server refused one more event stream for this key (429 too_many_streams)."""


class _Snapshot(msgspec.Struct, rename="camel"):
    jobs: list[PublicJob]  # the queue's figures beside them are not needed here


_SNAPSHOT = msgspec.json.Decoder(_Snapshot)
_JOB = msgspec.json.Decoder(PublicJob)


def _mark(job: Job) -> _Mark:
    """What tells two states of a job apart; its first three fields order them."""
    return (job.created_at, job.updated_at, job.terminal, job.status, job.progress, job.attempts)


class _Seen:
    """The last state seen of each job: what makes a change new. The jobs not ended are all
    kept (a reconnect reads those the snapshot lacks); the last `_FINISHED_KEPT` ended ones."""

    def __init__(self) -> None:
        self.live: dict[str, _Mark] = {}
        self._finished: OrderedDict[str, _Mark] = OrderedDict()
        self.mark_s = 0.0  # the newest `updated_at` seen: newer is a change for an unseen job

    def new(self, job: Job, *, catching_up: bool) -> bool:
        """Whether `job` is a change to deliver; it is remembered as seen either way."""
        mark = _mark(job)
        last = self.live.get(job.id) or self._finished.get(job.id)
        if last is None:
            fresh = not catching_up or job.updated_at > self.mark_s
        else:
            fresh = mark != last and mark[:3] >= last[:3]
        if last is None or fresh:
            self._remember(job.id, mark)
        self.mark_s = max(self.mark_s, job.updated_at)
        return fresh

    def forget(self, job_id: str) -> None:
        self.live.pop(job_id, None)

    def _remember(self, job_id: str, mark: _Mark) -> None:
        if not mark[2]:
            self.live[job_id] = mark
            self._finished.pop(job_id, None)
            return
        self.live.pop(job_id, None)
        self._finished[job_id] = mark
        self._finished.move_to_end(job_id)
        if len(self._finished) > _FINISHED_KEPT:
            self._finished.popitem(last=False)


class Subscription:
    """One `subscribe`: calling it unsubscribes at once (no delivery after it returns);
    `aclose` also waits until the stream is closed."""

    def __init__(
        self,
        events: Events,
        read: Callable[[str], Awaitable[Job]],
        callback: Callable[[Job], None],
        retry: RetryPolicy,
    ):
        self._events, self._read, self._callback, self._retry = events, read, callback, retry
        self._seen = _Seen()
        self._closed = False
        self._failures = 0  # streams in a row that ended or failed to open
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Subscription:
        """Open the stream (raising what refused it), then follow it in a task."""
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.ensure_future(self._run(opened))
        self._task.add_done_callback(lambda _: opened.done() or opened.cancel())
        try:
            await asyncio.shield(opened)
        except BaseException:
            self.__call__()
            raise
        return self

    def __call__(self) -> None:
        """Unsubscribe (on the client's loop): no callback runs after this returns."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()

    async def aclose(self) -> None:
        self()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def on_close(self, closed: Callable[[Subscription], None]) -> None:
        """Call `closed(self)` once the subscription has ended (unsubscribed, or given up)."""
        if self._task is not None:
            self._task.add_done_callback(lambda _: closed(self))

    @property
    def closed(self) -> bool:
        return self._closed or (self._task is not None and self._task.done())

    async def _run(self, opened: asyncio.Future[None]) -> None:
        while True:
            try:
                await self._follow(opened)
                reason: BaseException | str = "the stream ended"
            except GenqueueError as exc:
                if not _passing(exc) or not opened.done():
                    return _ended(opened, exc)
                reason = exc
            except Exception as exc:  # a bug here: end it, loudly, rather than loop on it
                log.exception("job subscription failed")
                return _ended(opened, exc)
            if not opened.done():
                return _ended(opened, GenqueueError("the job event stream ended at once"))
            self._failures += 1
            if self._retry.gives_up(self._failures):
                return _ended(
                    opened,
                    GenqueueError(
                        f"the stream failed {self._failures} times in a row (last: {reason})"
                    ),
                )
            log.warning("job event stream lost (%s); reopening", reason)
            await asyncio.sleep(self._retry.delay_s(self._failures))

    async def _follow(self, opened: asyncio.Future[None]) -> None:
        """Read one stream until it ends (`opened` is set by the first one's snapshot)."""
        async with contextlib.aclosing(self._events()) as events:
            async for event, data in events:
                if event == "snapshot":
                    snapshot = answers.decode(_SNAPSHOT, data)
                    jobs = [answers.job(p) for p in snapshot.jobs]
                    self._failures = 0
                    if opened.done():
                        await self._catch_up(jobs)
                    else:
                        for job in jobs:  # seen: their later changes are what is new
                            self._seen.new(job, catching_up=True)
                        opened.set_result(None)
                    break
                raise GenqueueError(f"the job event stream began with {event!r}, not a snapshot")
            else:
                return
            async for event, data in events:
                if event == "job":
                    self._deliver([answers.job(answers.decode(_JOB, data))], catching_up=False)

    async def _catch_up(self, snapshot: list[Job]) -> None:
        """After a reopen: the changes made while the stream was down, as far as known."""
        self._deliver(snapshot, catching_up=True)
        shown = {job.id for job in snapshot}
        unshown = [job_id for job_id in self._seen.live if job_id not in shown]
        limit = asyncio.Semaphore(_CATCH_UP_AT_ONCE)

        async def reread(job_id: str) -> None:
            async with limit:
                try:
                    job = await self._read(job_id)
                except JobNotFound:  # removed by retention meanwhile
                    self._seen.forget(job_id)
                    return
            self._deliver([job], catching_up=True)

        await asyncio.gather(*(reread(job_id) for job_id in unshown))

    def _deliver(self, jobs: Iterable[Job], *, catching_up: bool) -> None:
        for job in jobs:
            if self._closed:
                return
            if not self._seen.new(job, catching_up=catching_up):
                continue
            try:
                self._callback(job)
            except Exception:
                log.exception("job event subscriber failed")


def _passing(exc: GenqueueError) -> bool:
    """Whether a reopen may cure it: no server, a full disk, the key's streams all taken
    (a dropped one not yet let go), a proxy's 5xx. Not a refused key or a foreign answer."""
    if isinstance(exc, StreamsFull | Unreachable | StorageError):
        return True
    return exc.status is not None and exc.status >= 500


def _ended(opened: asyncio.Future[None], why: BaseException) -> None:
    """The subscription ends: `start` raises `why` if the first stream never opened; once
    it has, the end is logged (no caller is waiting to be told)."""
    if opened.done():
        log.error("job subscription ended: %s", why)
    else:
        opened.set_exception(why)
