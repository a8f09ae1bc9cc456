"""JobQueue: the whole public API of the queue. The HTTP server is its first client, and
`genqueue.client.Client` offers the same methods over HTTP.

    with JobQueue(config, processor) as q:
        job, created = q.submit({"prompt": "a cat surfing"}, user_id="u1")
        print(q.result(job.id, timeout_s=60).video_url)

Usable from plain threads (`submit`, `get`, `cancel`, `list_jobs`, `status`, `wait`,
`result`, `healthy`, `webhooks.stats/dead/replay`) and from asyncio code (`asubmit`,
`aget`, ..., `await_job`, `aresult`: they never block the loop). Every acknowledged
submit is durable. Jobs read through it carry a local video's URL signed afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import msgspec

from genqueue.actors.bridge import LoopThread, post
from genqueue.actors.coalesce import Coalescer
from genqueue.actors.job import JobActor
from genqueue.actors.messages import Cancel, GetJob, Status, Submit, SubmitMany
from genqueue.actors.queue import QueueActor
from genqueue.actors.services import QUEUE, QueueServices
from genqueue.actors.system import ActorSystem
from genqueue.actors.webhook import WebhookOutbox
from genqueue.clock import Clock, RealClock
from genqueue.config import Config
from genqueue.errors import JobFailed, JobNotFound, StorageError
from genqueue.models import (
    GenerationRequest,
    Job,
    JobPage,
    JobResult,
    JobStatus,
    QueueStatus,
    Submission,
)
from genqueue.outbox import Webhooks
from genqueue.processor import Processor
from genqueue.requests import RequestLike, parse_request
from genqueue.storage.dirlock import DataDirLock, private_file
from genqueue.storage.jobindex import JobIndex
from genqueue.storage.state import StateStore
from genqueue.storage.videourls import VideoUrls
from genqueue.webhooks import WebhookStats

__all__ = ["JobQueue"]

log = logging.getLogger("genqueue.jobqueue")
QUEUE_KEY = QUEUE.key


class JobQueue:
    """A durable job queue in this process: open it, submit, watch, join, close."""

    def __init__(
        self,
        config: Config,
        processor: Processor,
        *,
        clock: Clock | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ):
        self.config = config
        self.processor = processor
        self.clock: Clock = clock or RealClock()
        self._loop = loop
        self._loop_thread: LoopThread | None = None
        self._subscribers: list[Callable[[Job], None]] = []
        self._events: queue.Queue[Job | None] = queue.Queue()
        self._event_thread: threading.Thread | None = None
        self._changed = threading.Condition()
        self._changes = 0  # counts wake-ups of `join` (under `_changed`)
        self._errors: list[BaseException] = []
        # Submissions made in one turn of the loop: one message and one commit for them all.
        self._batch: Coalescer[tuple[Submit, asyncio.Future[tuple[Job, bool]]]] = Coalescer(
            self._wake_batch
        )
        self.store: StateStore | None = None
        self.system: ActorSystem | None = None
        self._webhooks: WebhookOutbox | None = None
        # The webhook outbox: counters, dead letters, replay.
        self.webhooks = Webhooks(lambda: self._webhooks)
        self._watchers: dict[str, list[Callable[[Job], None]]] = {}  # job id -> `wait`s
        self._watch_lock = threading.Lock()
        self._unavailable = False  # closed by a failed store, until `reopen` succeeds
        self._lifecycle = threading.Lock()  # reopen and close, one at a time
        self._closed = False
        self._dir_lock: DataDirLock | None = None  # held from open to close, across reopen
        # Signs the URLs of local videos whenever a job is read (set by the first open).
        self.video_urls: VideoUrls | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> JobQueue:
        """Take the data directory (DataDirInUse if another open queue has it), then read
        it and start the actors. A failed open gives the directory back."""
        took_lock = self._dir_lock is None
        if took_lock:
            self._closed = False
            self._dir_lock = DataDirLock.acquire(self.config.data_dir)
        try:
            return self._open()
        except BaseException:
            if took_lock:
                self._release_dir()
            raise

    def _open(self) -> JobQueue:
        cfg = self.config
        if self.video_urls is None:  # the data directory is ours: its secret may be made
            self.video_urls = VideoUrls.load(
                cfg.data_dir, ttl_s=cfg.video_url_ttl_s, clock=self.clock, storage=cfg.storage
            )
        db_path = Path(cfg.data_dir) / "state.db"
        for path in (db_path, *(db_path.with_name(db_path.name + s) for s in ("-wal", "-shm"))):
            # state.db before SQLite creates it (its -wal and -shm then take its mode 0600);
            # files of an older version are narrowed to 0600.
            if path == db_path or path.exists():
                private_file(path)
        self.store = StateStore(db_path, synchronous=cfg.synchronous)
        if self._loop is None:
            self._loop_thread = LoopThread()
            self._loop = self._loop_thread.start()
        services = QueueServices(
            config=cfg,
            processor=self.processor,
            publish=self._publish,
            on_unexpected=self._record_error,
            on_idle=self._changed_now,
            on_retained=self._forget_videos,
        )
        system = ActorSystem(
            self.store,
            clock=self.clock,
            loop=self._loop,
            idle_timeout_s=cfg.idle_timeout_s,
            services=services,
        )
        if cfg.webhook_target:  # the outbox: events stored in the job's turn, sent after
            self._webhooks = services.webhooks = WebhookOutbox(
                system, cfg, video_urls=self.video_urls
            )
        system.register(QueueActor, JobActor)
        for cls in (QueueActor, JobActor):
            # Create the tables now: creating one flushes, and a first use could otherwise
            # come from an after-commit callback on the committer thread (a deadlock).
            self.store.namespace(cls.kind)
        self.system = system
        self._event_thread = threading.Thread(target=self._deliver_events, name="job-events")
        self._event_thread.daemon = True
        self._event_thread.start()
        system.start()
        system.get(QueueActor, QUEUE_KEY)  # activation recovers in-flight jobs
        if self._webhooks is not None:
            self._webhooks.start()  # sends what a previous run left pending
        return self

    def close(self) -> None:
        with self._lifecycle:  # after a reopen in progress, never beside it
            self._closed = True
            try:
                self._shut(keep_loop=False)
            finally:
                self._release_dir()

    def _release_dir(self) -> None:
        lock, self._dir_lock = self._dir_lock, None
        if lock is not None:
            lock.release()

    @property
    def unavailable(self) -> bool:
        """True while the state store has failed (a full or read-only disk): requests get
        StorageError until `reopen` succeeds."""
        return self._unavailable or (self.store is not None and self.store.failure is not None)

    def reopen(self) -> None:
        """Start again from disk after the state store failed, once the disk takes writes
        again: the actors stop and the store closes as in `close` (the loop stays), then
        everything opens as after a restart (queued jobs keep their order, running ones
        resume from their checkpoints). Nothing the failed store refused was acknowledged,
        so nothing acknowledged is lost. Raises if the store still cannot write; the queue
        then stays unavailable, and `reopen` may be tried again."""
        with self._lifecycle:
            if self._closed:
                return
            self._unavailable = True
            self._shut(keep_loop=True)
            try:
                self.open()
                assert self.store is not None
                probe = self.store.namespace("health").put("reopened", self.clock.now())
                self.store.flush(probe, timeout_s=10)
            except BaseException:
                self._shut(keep_loop=True)
                raise
            self._unavailable = False

    def _parts(self) -> tuple[ActorSystem, StateStore]:
        """The open actor system and store, read together once (`reopen` replaces them):
        StorageError while the store is unavailable."""
        system, store = self.system, self.store
        if system is None or store is None:
            self._sys()  # raises: StorageError while unavailable, else "not open"
            raise RuntimeError("the JobQueue is not open")
        return system, store

    def _shut(self, *, keep_loop: bool) -> None:
        if self.system is not None:
            self.system.stop()
        if self._webhooks is not None and self._loop is not None:
            self._webhooks.close_on(self._loop)
            self._webhooks = None
        if self.store is not None:
            self.store.close()
        self._events.put(None)
        if self._event_thread is not None:
            self._event_thread.join(timeout=10)
            self._event_thread = None
        self.system = None
        if keep_loop:
            self._events = queue.Queue()
            self.store = None
        elif self._loop_thread is not None:
            self._loop_thread.stop()
            self._loop_thread = self._loop = None  # a later open() starts a new one

    def __enter__(self) -> JobQueue:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the API (threads) -------------------------------------------------------------------------

    def submit(self, request: RequestLike, *, user_id: str = "default") -> Submission:
        """Store the job durably and queue it; returns (job, created) once it survives a
        crash. `created` is False for a known client-chosen id: the stored job is returned."""
        job, created = self._sys().ask(QueueActor, QUEUE_KEY, self._submission(request, user_id))
        return Submission(self._present(job), created)

    def get(self, job_id: str) -> Job:
        """The job as it is now; JobNotFound if there is none."""
        job = self._stored(job_id)
        return self._present(job if job.terminal else self._sys().ask(JobActor, job_id, GetJob()))

    def cancel(self, job_id: str, reason: str = "cancelled by request") -> Job:
        """Cancel a queued job at once, stop a running one; a finished job is returned as is."""
        self._stored(job_id)
        return self._present(self._sys().ask(JobActor, job_id, Cancel(reason)))

    def list_jobs(
        self,
        user_id: str | None = None,
        statuses: Collection[JobStatus] | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobPage:
        """A page of jobs (of `user_id`, or everyone's), newest first, whose status is among
        `statuses`; pass `next_cursor` as `cursor` for the next page. Blocking reads."""
        system, store = self._parts()
        page = JobIndex(store).page(
            lambda job_id: JobActor.read(system, job_id),
            user_id=user_id,
            statuses=statuses,
            limit=limit,
            cursor=cursor,
        )
        return JobPage([self._present(job) for job in page.items], page.next_cursor)

    def status(self) -> QueueStatus:
        """The queue's figures, with the webhook outbox's counters in `webhooks`."""
        return msgspec.structs.replace(
            self._queue_status(),
            webhooks=self.webhooks.stats().as_status(),
            provider=self._provider_stats(),
        )

    def wait(self, job_id: str, timeout_s: float | None = None) -> Job:
        """The job once it is finished (completed, failed or cancelled); TimeoutError after
        `timeout_s` (None: no limit)."""
        done = threading.Event()
        ended: list[Job] = []

        def finished(job: Job) -> None:
            ended.append(job)
            done.set()

        with self._watching(job_id, finished):
            job = self.get(job_id)
            if job.terminal:
                return job
            if not done.wait(timeout_s):
                raise TimeoutError(f"job {job_id} has not finished after {timeout_s} s")
        return self._present(ended[0])

    def result(self, job_id: str, timeout_s: float | None = None) -> JobResult:
        """The job's result once it completes; JobFailed if it failed or was cancelled."""
        return _result_of(self.wait(job_id, timeout_s))

    def subscribe(self, callback: Callable[[Job], None]) -> Callable[[], None]:
        """Call `callback(job)` on every stored change of a job; returns an unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def healthy(self) -> bool:
        """Whether the queue is open and its state store takes writes."""
        store = self.store
        return self.system is not None and store is not None and store.failure is None

    def video_url_valid(self, path: str, expires: str | None, signature: str | None) -> bool:
        """Whether a local video's URL (path, `expires`, `signature`) is one this queue signed
        and it has not expired (what a server of the video folder checks)."""
        urls = self.video_urls
        return urls is not None and urls.verify(path, expires, signature)

    def join(self, timeout_s: float = 60.0) -> None:
        """Wait until nothing is queued, running or waiting to retry; re-raise processor bugs."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._errors:
                raise self._errors.pop(0)
            with self._changed:
                seen = self._changes
            st = self._queue_status()
            if st.queued == 0 and st.in_flight == 0 and st.retry_wait == 0:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"queue not drained after {timeout_s} s: {st.queued} queued, "
                    f"{st.in_flight} in flight, {st.retry_wait} waiting to retry"
                )
            with self._changed:  # a change since the status was asked: look again at once
                if self._changes == seen:
                    self._changed.wait(min(remaining, 0.5))

    # -- the API (asyncio): the same, never blocking the loop ------------------------------

    async def asubmit(self, request: RequestLike, *, user_id: str = "default") -> Submission:
        submission = self._submission(request, user_id)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Job, bool]] = loop.create_future()
        self._batch.put((submission, fut))
        job, created = await fut
        return Submission(self._present(job), created)

    async def aget(self, job_id: str) -> Job:
        job = self._stored(job_id)
        if not job.terminal:
            job = await self._sys().ask_async(JobActor, job_id, GetJob())
        return self._present(job)

    async def acancel(self, job_id: str, reason: str = "cancelled by request") -> Job:
        self._stored(job_id)
        job: Job = await self._sys().ask_async(JobActor, job_id, Cancel(reason))
        return self._present(job)

    async def alist_jobs(
        self,
        user_id: str | None = None,
        statuses: Collection[JobStatus] | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobPage:
        return await asyncio.to_thread(self.list_jobs, user_id, statuses, limit, cursor)

    async def astatus(self) -> QueueStatus:
        status: QueueStatus
        webhooks: WebhookStats
        status, webhooks = await asyncio.gather(
            self._sys().ask_async(QueueActor, QUEUE_KEY, Status()), self.webhooks.astats()
        )
        return msgspec.structs.replace(
            status, webhooks=webhooks.as_status(), provider=self._provider_stats()
        )

    async def await_job(self, job_id: str, timeout_s: float | None = None) -> Job:
        """`wait` for asyncio code."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[Job] = loop.create_future()

        def finished(job: Job) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                post(loop, _settle, ended, job)

        with self._watching(job_id, finished):
            job = await self.aget(job_id)
            if job.terminal:
                return job
            try:
                return self._present(await asyncio.wait_for(ended, timeout_s))
            except TimeoutError:
                raise TimeoutError(f"job {job_id} has not finished after {timeout_s} s") from None

    async def aresult(self, job_id: str, timeout_s: float | None = None) -> JobResult:
        """`result` for asyncio code: the job's result once it completes, like arq's
        `Job.result()` or a Temporal handle's; JobFailed if it failed or was cancelled."""
        return _result_of(await self.await_job(job_id, timeout_s))

    async def ahealthy(self) -> bool:
        return self.healthy()

    # -- internals ----------------------------------------------------------------------

    def _submission(self, request: RequestLike, user_id: str) -> Submit:
        req = parse_request(request)
        return Submit(self._job_from(req, user_id), client_id=req.id is not None)

    def _job_from(self, req: GenerationRequest, user_id: str) -> Job:
        now = self.clock.now()
        job_id = req.id or uuid.uuid4().hex
        return Job(
            id=job_id,
            # Unique per job record, whatever the id: a client id reused after retention
            # gets a new generation (and so new webhook-ids). A server-chosen id is unique.
            generation_id=job_id if req.id is None else uuid.uuid4().hex,
            user_id=user_id,
            prompt=req.prompt,
            parameters=req.parameters,
            provider=req.provider,
            model=req.model or self.config.veo3_model,
            priority=req.priority,
            created_at=now,
            updated_at=now,
        )

    def _wake_batch(self) -> None:
        asyncio.get_running_loop().call_soon(self._send_batch)

    def _send_batch(self) -> None:
        batch = self._batch.take()
        if not batch:
            return
        message = SubmitMany(tuple(sub for sub, _ in batch))
        waiters = [fut for _, fut in batch]
        loop = asyncio.get_running_loop()

        def settle(ok: bool, value: Any) -> None:
            for i, fut in enumerate(waiters):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value[i])
                else:
                    fut.set_exception(value)

        def reply(ok: bool, value: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                post(loop, settle, ok, value)

        try:
            self._sys().send(QueueActor, QUEUE_KEY, message, reply)
        except Exception as exc:
            settle(False, exc)

    def _stored(self, job_id: str) -> Job:
        """The job's stored record (no actor activated); JobNotFound if there is none."""
        job = JobActor.read(self._sys(), job_id)
        if job is None:
            raise JobNotFound(f"job {job_id} does not exist")
        return job

    def _present(self, job: Job) -> Job:
        """`job` as a caller gets it: a local video's URL signed afresh (the record keeps
        it unsigned), so every read hands out a URL valid for the full TTL."""
        urls = self.video_urls
        return urls.present(job) if urls is not None and job.result is not None else job

    def _provider_stats(self) -> dict[str, Any]:
        """The processor's own figures (the GenerationActor's Veo calls), if it keeps any."""
        stats = getattr(self.processor, "stats", None)
        return dict(stats()) if callable(stats) else {}

    def _queue_status(self) -> QueueStatus:
        status: QueueStatus = self._sys().ask(QueueActor, QUEUE_KEY, Status())
        return status

    @contextlib.contextmanager
    def _watching(self, job_id: str, finished: Callable[[Job], None]) -> Iterator[None]:
        """Call `finished(job)` (from the committer thread) when the job's terminal change
        is committed, while inside this block."""
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

    def _sys(self) -> ActorSystem:
        if self.system is None:
            if self._unavailable:
                raise StorageError("the state store is unavailable until the disk takes writes")
            raise RuntimeError("the JobQueue is not open")
        return self.system

    def _publish(self, job: Job) -> None:
        if self._webhooks is not None:
            self._webhooks.published(job)
        if self._watchers and job.terminal:
            with self._watch_lock:
                watchers = list(self._watchers.get(job.id, ()))
            for finished in watchers:
                finished(job)
        if self._subscribers:  # `join` is woken by the queue's idle signal, not by events
            self._events.put(job)

    def _forget_videos(self, jobs: list[Job]) -> None:
        """Retention removed these jobs (committed): the processor deletes their videos, if
        it keeps any (`async delete_videos(jobs)`, as the GenerationActor does). A crash
        between the commit and the deletion leaves the file (its name is unguessable, and
        no URL for it is signed again)."""
        delete = getattr(self.processor, "delete_videos", None)
        if callable(delete) and jobs and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                asyncio.run_coroutine_threadsafe(delete(jobs), self._loop)

    def _record_error(self, job_id: str, exc: BaseException) -> None:
        self._errors.append(exc)

    def _deliver_events(self) -> None:
        """Deliver events in order; whatever queued up meanwhile goes out in one wake-up."""
        while True:
            batch = [self._events.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 1000:
                    batch.append(self._events.get_nowait())
            for stored in batch:
                if stored is None:
                    return
                job = self._present(stored)
                for callback in list(self._subscribers):
                    try:
                        callback(job)
                    except Exception:
                        log.exception("job event subscriber failed")
            self._changed_now()

    def _changed_now(self) -> None:
        """Wake `join`: a job changed, or the queue became idle."""
        with self._changed:
            self._changes += 1
            self._changed.notify_all()


def _result_of(job: Job) -> JobResult:
    if job.status != "completed" or job.result is None:
        raise JobFailed(job)
    return job.result


def _settle(future: asyncio.Future[Job], job: Job) -> None:
    if not future.done():
        future.set_result(job)
