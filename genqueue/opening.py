"""What `JobQueue.open` builds in an owned data directory: the state store and the actor
system, wired with the queue's services (and the webhook outbox when a target is set)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from genqueue.actors.job import JobActor
from genqueue.actors.queue import QueueActor
from genqueue.actors.services import QueueServices
from genqueue.actors.system import ActorSystem
from genqueue.actors.webhook import WebhookOutbox
from genqueue.clock import Clock
from genqueue.config import Config
from genqueue.storage.dirlock import private_file
from genqueue.storage.state import StateStore
from genqueue.storage.videourls import VideoUrls

__all__ = ["open_actors"]


def open_actors(
    cfg: Config,
    services: QueueServices,
    clock: Clock,
    loop: asyncio.AbstractEventLoop,
    video_urls: VideoUrls | None,
) -> tuple[StateStore, ActorSystem]:
    """The store (state.db, private) and the actor system, not yet started; sets
    `services.webhooks` when a webhook target is configured."""
    db_path = Path(cfg.data_dir) / "state.db"
    for path in (db_path, *(db_path.with_name(db_path.name + s) for s in ("-wal", "-shm"))):
        # state.db before SQLite creates it (its -wal and -shm then take its mode 0600);
        # files of an older version are narrowed to 0600.
        if path == db_path or path.exists():
            private_file(path)
    store = StateStore(db_path, synchronous=cfg.synchronous)
    system = ActorSystem(
        store, clock=clock, loop=loop, idle_timeout_s=cfg.idle_timeout_s, services=services
    )
    if cfg.webhook_target:  # the outbox: events stored in the job's turn, sent after
        services.webhooks = WebhookOutbox(system, cfg, video_urls=video_urls)
    system.register(QueueActor, JobActor)
    for cls in (QueueActor, JobActor):
        # Create the tables now: creating one flushes, and a first use could otherwise
        # come from an after-commit callback on the committer thread (a deadlock).
        store.namespace(cls.kind)
    return store, system
