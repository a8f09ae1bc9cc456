"""JobQueue: the whole public API of the queue. The HTTP server is its first client, and
`genqueue.client.Client` offers the same methods over HTTP.

    with JobQueue(config, processor) as q:
        job, created = q.submit({"prompt": "a cat surfing"}, user_id="u1")
        print(q.result(job.id, timeout_s=60).video_url)

Usable from plain threads (`submit`, `get`, `cancel`, `list_jobs`, `status`, `wait`,
`result`, `subscribe`, `healthy`, `webhooks.stats/dead/replay`) and from asyncio code
(`asubmit`, `aget`, ..., `await_job`, `aresult`, `asubscribe`: they never block the loop).
Every acknowledged submit is durable. Jobs read through it carry a local video's URL
signed afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

import msgspec

from genqueue.actors.job import JobActor
from genqueue.actors.messages import Cancel, GetJob, Status, Submit
from genqueue.actors.queue import QueueActor
from genqueue.actors.services import QUEUE, QueueServices
from genqueue.actors.system import ActorSystem
from genqueue.changes import JobChanges, result_of
from genqueue.clock import Clock, RealClock
from genqueue.config import Config
from genqueue.errors import JobNotFound
from genqueue.lifecycle import Lifecycle
from genqueue.models import (
    Job,
    JobPage,
    JobResult,
    JobStatus,
    QueueStatus,
    Submission,
)
from genqueue.outbox import Webhooks
from genqueue.processor import Processor
from genqueue.providers.registry import ProviderList
from genqueue.requests import RequestLike, Routing, new_job, parse_request
from genqueue.storage.jobindex import JobIndex, check_user_id
from genqueue.storage.state import StateStore
from genqueue.storage.videourls import VideoUrls
from genqueue.submissions import Submissions
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
        self._changes = JobChanges(self._present)
        self._errors: list[BaseException] = []
        self._submissions = Submissions(self._sys)
        self._life = Lifecycle(config, self.clock, loop, self._services, self._changes)
        # The webhook outbox: counters, dead letters, replay.
        self.webhooks = Webhooks(lambda: self._life.webhooks)
        self._routes = Routing(config)  # the providers and models a request's job runs on

    # -- lifecycle (lifecycle.py) ------------------------------------------------------------

    def open(self) -> JobQueue:
        """Take the data directory (DataDirInUse if another open queue has it), then read
        it and start the actors. A failed open gives the directory back."""
        self._life.open()
        return self

    def close(self) -> None:
        self._life.close()

    def reopen(self) -> None:
        """Start again from disk after the state store failed, once the disk takes writes
        again: the actors stop and the store closes as in `close` (the loop stays), then
        everything opens as after a restart (queued jobs keep their order, running ones
        resume from their checkpoints). Nothing the failed store refused was acknowledged,
        so nothing acknowledged is lost. Raises if the store still cannot write; the queue
        then stays unavailable, and `reopen` may be tried again."""
        self._life.reopen()

    @property
    def unavailable(self) -> bool:
        """True while the state store has failed (a full or read-only disk): requests get
        StorageError until `reopen` succeeds."""
        return self._life.unavailable

    @property
    def store(self) -> StateStore | None:
        return self._life.store

    @property
    def system(self) -> ActorSystem | None:
        return self._life.system

    @property
    def video_urls(self) -> VideoUrls | None:
        """Signs the URLs of local videos whenever a job is read (set by the first open)."""
        return self._life.video_urls

    def parts(self) -> tuple[ActorSystem, StateStore]:
        """(Internal, for genqueue.cluster's consumer.) The open actor system and store,
        read together once (`reopen` replaces them): StorageError while unavailable."""
        return self._life.parts()

    def _services(self) -> QueueServices:
        return QueueServices(
            config=self.config,
            processor=self.processor,
            publish=self._publish,
            on_unexpected=self._record_error,
            on_idle=self._changes.changed_now,
            on_retained=self._forget_videos,
        )

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

    def providers(self) -> ProviderList:
        """The providers this queue offers: their models, each model's capabilities and
        price a second of video (what a submission's `provider` and `model` may name)."""
        return ProviderList(self._routes.registry.listing())

    def get(self, job_id: str) -> Job:
        """The job as it is now; JobNotFound if there is none."""
        job = self._stored(job_id)
        return self._present(job if job.terminal else self._sys().ask(JobActor, job_id, GetJob()))

    def cancel(self, job_id: str, reason: str = "cancelled by request") -> Job:
        """Cancel a queued job at once, stop a running one; IllegalTransition if it had ended."""
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
        system, store = self.parts()
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
            cluster=self._cluster_stats(),
        )

    def wait(self, job_id: str, timeout_s: float | None = None) -> Job:
        """The job once it is finished (completed, failed or cancelled); TimeoutError after
        `timeout_s` (None: no limit)."""
        return self._present(self._changes.wait_end(job_id, lambda: self.get(job_id), timeout_s))

    def result(self, job_id: str, timeout_s: float | None = None) -> JobResult:
        """The job's result once it completes; JobFailed if it failed or was cancelled."""
        return result_of(self.wait(job_id, timeout_s))

    def subscribe(self, callback: Callable[[Job], None]) -> Callable[[], None]:
        """Call `callback(job)` on every stored change of a job; returns an unsubscribe function."""
        return self._changes.subscribe(callback)

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
            seen = self._changes.seen()
            st = self._queue_status()
            if st.queued == 0 and st.in_flight == 0 and st.retry_wait == 0:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"queue not drained after {timeout_s} s: {st.queued} queued, "
                    f"{st.in_flight} in flight, {st.retry_wait} waiting to retry"
                )
            # a change since the status was asked: look again at once
            self._changes.wait_after(seen, min(remaining, 0.5))

    # -- the API (asyncio): the same, never blocking the loop ------------------------------

    async def asubmit(self, request: RequestLike, *, user_id: str = "default") -> Submission:
        fut = self._submissions.put(self._submission(request, user_id))
        job, created = await fut
        return Submission(self._present(job), created)

    async def aget(self, job_id: str) -> Job:
        # the stored record may be read from SQLite (a job not written lately): off the loop
        job = await asyncio.to_thread(self._stored, job_id)
        if not job.terminal:
            job = await self._sys().ask_async(JobActor, job_id, GetJob())
        return self._present(job)

    async def acancel(self, job_id: str, reason: str = "cancelled by request") -> Job:
        await asyncio.to_thread(self._stored, job_id)
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

    async def aproviders(self) -> ProviderList:
        return self.providers()  # the configuration's registry: no store, no actor

    async def astatus(self) -> QueueStatus:
        status: QueueStatus
        webhooks: WebhookStats
        status, webhooks = await asyncio.gather(
            self._sys().ask_async_after_writes(QueueActor, QUEUE_KEY, Status()),
            self.webhooks.astats(),
        )
        return msgspec.structs.replace(
            status,
            webhooks=webhooks.as_status(),
            provider=self._provider_stats(),
            cluster=self._cluster_stats(),
        )

    async def await_job(self, job_id: str, timeout_s: float | None = None) -> Job:
        """`wait` for asyncio code."""
        ended = await self._changes.await_end(job_id, lambda: self.aget(job_id), timeout_s)
        return self._present(ended)

    async def aresult(self, job_id: str, timeout_s: float | None = None) -> JobResult:
        """`result` for asyncio code: the job's result once it completes, like arq's
        `Job.result()` or a Temporal handle's; JobFailed if it failed or was cancelled."""
        return result_of(await self.await_job(job_id, timeout_s))

    async def asubscribe(self, callback: Callable[[Job], None]) -> Callable[[], None]:
        """`subscribe` for asyncio code (`callback` still runs on the `job-events` thread)."""
        return self.subscribe(callback)

    async def ahealthy(self) -> bool:
        return self.healthy()

    # -- internals ----------------------------------------------------------------------

    def _submission(self, request: RequestLike, user_id: str) -> Submit:
        req = parse_request(request)
        job = new_job(req, check_user_id(user_id), now_s=self.clock.now(), routes=self._routes(req))
        return Submit(job, client_id=req.id is not None)

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

    def _cluster_stats(self) -> dict[str, Any] | None:
        """The coordinator's view of its workers and queues (`dispatch = "sqs"`)."""
        stats = getattr(self.processor, "cluster_stats", None)
        return dict(stats()) if callable(stats) else None

    def _queue_status(self) -> QueueStatus:
        # After the writes queued so far: the counters agree with any job read before.
        status: QueueStatus = self._sys().ask_after_writes(QueueActor, QUEUE_KEY, Status())
        return status

    def _sys(self) -> ActorSystem:
        return self._life.running_system()

    def _publish(self, job: Job) -> None:
        outbox = self._life.webhooks
        if outbox is not None:
            outbox.published(job)
        self._changes.publish(job)

    def _forget_videos(self, jobs: list[Job]) -> None:
        """Retention removed these jobs (committed): the processor deletes their videos, if
        it keeps any (`async delete_videos(jobs)`, as the GenerationActor does). A crash
        between the commit and the deletion leaves the file (its name is unguessable, and
        no URL for it is signed again)."""
        delete = getattr(self.processor, "delete_videos", None)
        loop = self._life.loop
        if callable(delete) and jobs and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                asyncio.run_coroutine_threadsafe(delete(jobs), loop)

    def _record_error(self, job_id: str, exc: BaseException) -> None:
        self._errors.append(exc)
