"""JobQueue: the embeddable API. The same actors the HTTP server uses, without HTTP.

    with JobQueue(config, processor) as q:
        job = q.submit({"prompt": "a cat surfing"}, user_id="u1")
        q.join(timeout_s=60)

Usable from plain threads (`submit`, `get`, ...) and from asyncio code (`asubmit`,
`aget`, ...: they never block the loop). Every acknowledged submit is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from genqueue.actors.bridge import LoopThread, post
from genqueue.actors.job import JobActor, Processor, QueueServices
from genqueue.actors.messages import Cancel, GetJob, Status, Submit, SubmitMany
from genqueue.actors.queue import QueueActor
from genqueue.actors.system import ActorSystem
from genqueue.actors.webhook import DeadLetters, DeliveryNotFound, WebhookOutbox, WebhookStats
from genqueue.clock import Clock, RealClock
from genqueue.config import Config
from genqueue.errors import InvalidRequest, JobNotFound, StorageError
from genqueue.models import GenerationRequest, Job, QueueStatus, validate_request
from genqueue.providers.registry import Registry
from genqueue.storage.dirlock import DataDirLock, private_file
from genqueue.storage.state import StateStore
from genqueue.storage.videourls import VideoUrls
from genqueue.webhooks import Delivery

__all__ = ["JobQueue"]

log = logging.getLogger("genqueue.jobqueue")
QUEUE_KEY = "main"
_REQUEST = msgspec.json.Decoder(GenerationRequest)


def parse_request(request: GenerationRequest | dict[str, Any] | bytes) -> GenerationRequest:
    """Decode and validate a request; InvalidRequest names the bad field."""
    try:
        if isinstance(request, bytes):
            req = _REQUEST.decode(request)
        elif isinstance(request, dict):
            req = msgspec.convert(request, GenerationRequest)
        else:
            req = request
    except msgspec.ValidationError as exc:
        field = str(exc).rsplit("`$.", 1)[-1].rstrip("`") if "`$." in str(exc) else None
        raise InvalidRequest(str(exc), field=field) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}", code="invalid_json") from exc
    except UnicodeDecodeError as exc:  # msgspec checks UTF-8 only when it builds a str
        raise InvalidRequest(f"body is not valid UTF-8: {exc.reason}", code="invalid_json") from exc
    validate_request(req)
    return req


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
        self._batch: list[tuple[Submit, asyncio.Future[tuple[Job, bool]]]] = []
        self.store: StateStore | None = None
        self.system: ActorSystem | None = None
        self._webhooks: WebhookOutbox | None = None
        self._unavailable = False  # closed by a failed store, until `reopen` succeeds
        self._lifecycle = threading.Lock()  # reopen and close, one at a time
        self._closed = False
        self._dir_lock: DataDirLock | None = None  # held from open to close, across reopen
        # Signs the URLs of local videos whenever a job is read (set by the first open).
        self.video_urls: VideoUrls | None = None
        self._registry: Registry | None = None  # built at the first submission

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
        system = ActorSystem(
            self.store, clock=self.clock, loop=self._loop, idle_timeout_s=cfg.idle_timeout_s
        )
        system.services = QueueServices(  # type: ignore[attr-defined]
            config=cfg,
            processor=self.processor,
            publish=self._publish,
            on_unexpected=self._record_error,
            queue_cls=QueueActor,
            on_idle=self._changed_now,
            on_retained=self._forget_videos,
        )
        if cfg.webhook_target:  # the outbox: events stored in the job's turn, sent after
            self._webhooks = WebhookOutbox(system, cfg, video_urls=self.video_urls)
            system.services.on_event = self._webhooks.on_event  # type: ignore[attr-defined]
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

    def parts(self) -> tuple[ActorSystem, StateStore]:
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

    def new_job(self, request: GenerationRequest | dict[str, Any] | bytes, user_id: str) -> Job:
        return self._submission(request, user_id).job

    def _submission(
        self, request: GenerationRequest | dict[str, Any] | bytes, user_id: str
    ) -> Submit:
        req = parse_request(request)
        return Submit(self._job_from(req, user_id), client_id=req.id is not None)

    @property
    def registry(self) -> Registry:
        """The providers this queue offers (GET /api/providers)."""
        if self._registry is None:
            self._registry = Registry(self.config)
        return self._registry

    def _job_from(self, req: GenerationRequest, user_id: str) -> Job:
        # checked against each chosen model's capability row before anything is stored
        routes = [
            msgspec.structs.replace(r, cost=self.registry.start_cost(r, req.parameters))
            for r in self.registry.route(req)
        ]
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
            provider=routes[0].provider,
            model=routes[0].model,
            routes=routes if len(routes) > 1 else None,
            estimated_cost=routes[0].cost,  # a fallback takes its route's own
            priority=req.priority,
            created_at=now,
            updated_at=now,
        )

    def submit_detailed(
        self, request: GenerationRequest | dict[str, Any] | bytes, *, user_id: str = "default"
    ) -> tuple[Job, bool]:
        """Submit; returns (job, created). `created` is False for a known client-chosen id."""
        submission = self._submission(request, user_id)
        result: tuple[Job, bool] = self._sys().ask(QueueActor, QUEUE_KEY, submission)
        return result

    def submit(
        self, request: GenerationRequest | dict[str, Any] | bytes, *, user_id: str = "default"
    ) -> Job:
        """Store the job durably and queue it; returns it once it survives a crash."""
        return self.submit_detailed(request, user_id=user_id)[0]

    def get(self, job_id: str) -> Job:
        job = JobActor.read(self._sys(), job_id)
        if job is None:
            raise JobNotFound(f"job {job_id} does not exist")
        return self._sys().ask(JobActor, job_id, GetJob()) if not job.terminal else job

    def cancel(self, job_id: str, reason: str = "cancelled by request") -> Job:
        if JobActor.read(self._sys(), job_id) is None:
            raise JobNotFound(f"job {job_id} does not exist")
        job: Job = self._sys().ask(JobActor, job_id, Cancel(reason))
        return job

    def status(self) -> QueueStatus:
        """The queue's figures, with the webhook outbox's counters in `webhooks`."""
        return msgspec.structs.replace(
            self._queue_status(),
            webhooks=self.webhook_stats().as_status(),
            provider=self._provider_stats(),
            cluster=self._cluster_stats(),
        )

    def _cluster_stats(self) -> dict[str, Any] | None:
        """The coordinator's view of its workers and queues (`dispatch = "sqs"`)."""
        stats = getattr(self.processor, "cluster_stats", None)
        return dict(stats()) if callable(stats) else None

    def _provider_stats(self) -> dict[str, Any]:
        """The processor's own figures (the GenerationActor's Veo calls), if it keeps any."""
        stats = getattr(self.processor, "stats", None)
        return dict(stats()) if callable(stats) else {}

    def _queue_status(self) -> QueueStatus:
        # After the writes queued so far: the counters agree with any job read before.
        status: QueueStatus = self._sys().ask_after_writes(QueueActor, QUEUE_KEY, Status())
        return status

    def subscribe(self, callback: Callable[[Job], None]) -> Callable[[], None]:
        """Call `callback(job)` on every stored change of a job; returns an unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

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

    # -- the API (asyncio) -------------------------------------------------------------------------

    async def asubmit_detailed(
        self, request: GenerationRequest | dict[str, Any] | bytes, *, user_id: str = "default"
    ) -> tuple[Job, bool]:
        submission = self._submission(request, user_id)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Job, bool]] = loop.create_future()
        self._batch.append((submission, fut))
        if len(self._batch) == 1:
            # Every submission made in this turn of the loop goes in one message and one
            # commit: far fewer thread hand-offs per request under load.
            loop.call_soon(self._send_batch)
        return await fut

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        message = SubmitMany(tuple(sub for sub, _ in batch))
        waiters = [fut for _, fut in batch]
        loop = asyncio.get_running_loop()

        def settle(ok: bool, value: Any) -> None:
            for i, fut in enumerate(waiters):
                if fut.done():
                    continue
                if ok and isinstance(value[i], BaseException):  # this one was refused
                    fut.set_exception(value[i])
                elif ok:
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

    async def asubmit(
        self, request: GenerationRequest | dict[str, Any] | bytes, *, user_id: str = "default"
    ) -> Job:
        return (await self.asubmit_detailed(request, user_id=user_id))[0]

    async def aget(self, job_id: str) -> Job:
        job = JobActor.read(self._sys(), job_id)
        if job is None:
            raise JobNotFound(f"job {job_id} does not exist")
        if job.terminal:
            return job
        live: Job = await self._sys().ask_async(JobActor, job_id, GetJob())
        return live

    async def acancel(self, job_id: str, reason: str = "cancelled by request") -> Job:
        if JobActor.read(self._sys(), job_id) is None:
            raise JobNotFound(f"job {job_id} does not exist")
        job: Job = await self._sys().ask_async(JobActor, job_id, Cancel(reason))
        return job

    async def astatus(self) -> QueueStatus:
        status: QueueStatus
        webhooks: WebhookStats
        status, webhooks = await asyncio.gather(
            self._sys().ask_async_after_writes(QueueActor, QUEUE_KEY, Status()),
            self.awebhook_stats(),
        )
        return msgspec.structs.replace(
            status,
            webhooks=webhooks.as_status(),
            provider=self._provider_stats(),
            cluster=self._cluster_stats(),
        )

    # -- webhooks (the outbox) ---------------------------------------------------------------

    def webhook_stats(self) -> WebhookStats:
        """Counters of the webhook outbox (all zero when no webhook target is configured)."""
        return self._webhooks.stats() if self._webhooks is not None else WebhookStats()

    async def awebhook_stats(self) -> WebhookStats:
        return await self._webhooks.astats() if self._webhooks is not None else WebhookStats()

    def dead_webhooks(self) -> list[Delivery]:
        """Dead-lettered deliveries: kept until replayed."""
        return self._webhooks.dead() if self._webhooks is not None else []

    def replay_webhook(self, delivery_id: str) -> Delivery:
        """Send a dead-lettered delivery again, with the same webhook-id."""
        if self._webhooks is None:
            raise InvalidRequest("no webhook target is configured", field="webhook_url")
        return self._webhooks.replay(delivery_id)

    async def adead_webhooks(self, *, limit: int = 100, after: str | None = None) -> DeadLetters:
        """A page of dead-lettered deliveries; pass `next_after` as `after` for the next one."""
        if self._webhooks is None:
            return DeadLetters([])
        return await self._webhooks.apage_dead(limit, after)

    async def areplay_webhook(self, delivery_id: str) -> Delivery:
        """Send a dead-lettered delivery again. DeliveryNotFound for an unknown id (or no
        webhook target), DeliveryNotDead for one still pending."""
        if self._webhooks is None:
            raise DeliveryNotFound("no webhook target is configured")
        return await self._webhooks.areplay(delivery_id)

    # -- internals ----------------------------------------------------------------------

    def _sys(self) -> ActorSystem:
        if self.system is None:
            if self._unavailable:
                raise StorageError("the state store is unavailable until the disk takes writes")
            raise RuntimeError("the JobQueue is not open")
        return self.system

    def _publish(self, job: Job) -> None:
        if self._webhooks is not None:
            self._webhooks.published(job)
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
            for job in batch:
                if job is None:
                    return
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
