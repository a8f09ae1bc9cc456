"""A JobQueue's running parts and their lifecycle: open, close, and reopen after a failure.

The parts: the data directory's lock (held from open to close, across reopens), the I/O
loop (a `LoopThread` of its own unless the caller gave one), the signer of local video
URLs, the state store, the wired actor system and the webhook outbox. `JobQueue` is the
API over them; this module only builds, starts and stops them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from genqueue.actors.bridge import LoopThread
from genqueue.actors.queue import QueueActor
from genqueue.actors.services import QUEUE, QueueServices
from genqueue.actors.system import ActorSystem
from genqueue.actors.webhook import WebhookOutbox
from genqueue.changes import JobChanges
from genqueue.clock import Clock
from genqueue.config import Config
from genqueue.errors import StorageError
from genqueue.opening import open_actors
from genqueue.storage.dirlock import DataDirLock
from genqueue.storage.state import StateStore
from genqueue.storage.videourls import VideoUrls

__all__ = ["Lifecycle"]


class Lifecycle:
    """Open, close and reopen the running parts of one JobQueue."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        loop: asyncio.AbstractEventLoop | None,
        services: Callable[[], QueueServices],
        changes: JobChanges,
    ):
        self.config = config
        self.clock = clock
        self.loop = loop
        self._loop_thread: LoopThread | None = None
        self._services = services
        self._changes = changes
        self.store: StateStore | None = None
        self.system: ActorSystem | None = None
        self.webhooks: WebhookOutbox | None = None
        self.failed = False  # closed by a failed store, until `reopen` succeeds
        self._lock = threading.Lock()  # reopen and close, one at a time
        self._closed = False
        self._dir_lock: DataDirLock | None = None
        # Signs the URLs of local videos whenever a job is read (set by the first open).
        self.video_urls: VideoUrls | None = None

    def open(self) -> None:
        """Take the data directory (DataDirInUse if another open queue has it), then read
        it and start the actors. A failed open gives the directory back."""
        took_lock = self._dir_lock is None
        if took_lock:
            self._closed = False
            self._dir_lock = DataDirLock.acquire(self.config.data_dir)
        try:
            self._open()
        except BaseException:
            if took_lock:
                self._release_dir()
            raise

    def _open(self) -> None:
        cfg = self.config
        if self.video_urls is None:  # the data directory is ours: its secret may be made
            self.video_urls = VideoUrls.load(
                cfg.data_dir, ttl_s=cfg.video_url_ttl_s, clock=self.clock, storage=cfg.storage
            )
        if self.loop is None:
            self._loop_thread = LoopThread()
            self.loop = self._loop_thread.start()
        services = self._services()
        self.store, system = open_actors(cfg, services, self.clock, self.loop, self.video_urls)
        self.webhooks = services.webhooks
        self.system = system
        self._changes.start()
        system.start()
        system.get(QueueActor, QUEUE.key)  # activation recovers in-flight jobs
        if self.webhooks is not None:
            self.webhooks.start()  # sends what a previous run left pending

    def close(self) -> None:
        with self._lock:  # after a reopen in progress, never beside it
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
        return self.failed or (self.store is not None and self.store.failure is not None)

    def reopen(self) -> None:
        """Start again from disk after the state store failed (see `JobQueue.reopen`)."""
        with self._lock:
            if self._closed:
                return
            self.failed = True
            self._shut(keep_loop=True)
            try:
                self.open()
                assert self.store is not None
                probe = self.store.namespace("health").put("reopened", self.clock.now())
                self.store.flush(probe, timeout_s=10)
            except BaseException:
                self._shut(keep_loop=True)
                raise
            self.failed = False

    def running_system(self) -> ActorSystem:
        """The open actor system: StorageError while the store has failed, else
        RuntimeError if the queue is not open."""
        if self.system is None:
            if self.failed:
                raise StorageError("the state store is unavailable until the disk takes writes")
            raise RuntimeError("the JobQueue is not open")
        return self.system

    def parts(self) -> tuple[ActorSystem, StateStore]:
        """The open actor system and store, read together once (`reopen` replaces them)."""
        system, store = self.system, self.store
        if system is None or store is None:
            self.running_system()  # raises: StorageError while unavailable, else "not open"
            raise RuntimeError("the JobQueue is not open")
        return system, store

    def _shut(self, *, keep_loop: bool) -> None:
        if self.system is not None:
            self.system.stop()
        if self.webhooks is not None and self.loop is not None:
            self.webhooks.close_on(self.loop)
            self.webhooks = None
        if self.store is not None:
            self.store.close()
        self._changes.stop()
        self.system = None
        if keep_loop:
            self.store = None
        elif self._loop_thread is not None:
            self._loop_thread.stop()
            self._loop_thread = self.loop = None  # a later open() starts a new one
