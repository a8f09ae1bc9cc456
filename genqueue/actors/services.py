"""What the queue's actors share, given to the ActorSystem at construction (typed, never
looked up), and the addresses of the singleton actors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from genqueue.config import Config
from genqueue.models import Job
from genqueue.processor import Processor

if TYPE_CHECKING:
    from genqueue.actors.webhook import WebhookOutbox

__all__ = ["QUEUE", "WEBHOOK_OUTBOX", "Address", "QueueServices"]


class Address(NamedTuple):
    """A singleton actor's kind and key."""

    kind: str
    key: str


QUEUE = Address("queue", "main")
WEBHOOK_OUTBOX = Address("webhook", "main")


@dataclass
class QueueServices:
    """What the queue's actors share, built by JobQueue before the actor system starts."""

    config: Config
    processor: Processor
    publish: Callable[[Job], None]
    on_unexpected: Callable[[str, BaseException], None]
    # Called (after commit) when the queue has nothing queued, running or waiting to retry.
    on_idle: Callable[[], None] | None = None
    # Called (after commit) with every job a retention pass removed (to delete their videos,
    # and whatever a processor keeps per job: sqs mode's checkpoints and cancel notices).
    on_retained: Callable[[list[Job]], None] | None = None
    # The webhook outbox, when a target is configured: a JobActor stores a job's event in
    # its own turn (`record`), and the WebhookActor sends it. Set before the system starts.
    webhooks: WebhookOutbox | None = None
