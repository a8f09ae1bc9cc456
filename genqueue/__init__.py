"""genqueue: a durable, actor-model job queue for AI video generation.

Everything a caller needs is here: `JobQueue` (embedded) and `genqueue.client.Client`
(the same methods over HTTP), the models they take and return, a `Processor` protocol for
the work, and the errors. Everything under `genqueue.actors` and `genqueue.storage` is
private.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genqueue.clock import Clock, ManualClock, RealClock
from genqueue.config import Config, load_config
from genqueue.errors import (
    BudgetExceeded,
    ConfigError,
    DataDirInUse,
    DeliveryNotDead,
    DeliveryNotFound,
    GenqueueError,
    IllegalTransition,
    InvalidRequest,
    JobFailed,
    JobNotFound,
    ProviderError,
    QueueFull,
    StorageError,
    Unauthorized,
    Unreachable,
)
from genqueue.ids import (
    DEAD_CURSOR,
    DEAD_CURSOR_PATTERN,
    DELIVERY_ID,
    DELIVERY_ID_PATTERN,
    ID_CHARS,
    JOB_ID,
    JOB_ID_PATTERN,
    NAME_PATTERN,
)
from genqueue.jobqueue import JobQueue
from genqueue.models import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    TERMINAL,
    GenerationParams,
    GenerationRequest,
    Job,
    JobPage,
    JobResult,
    JobStatus,
    QueueStatus,
    Submission,
)
from genqueue.outbox import Webhooks
from genqueue.processor import Processor, Report
from genqueue.providers.registry import ProviderList
from genqueue.requests import RequestLike, parse_request
from genqueue.webhooks import (
    DeadLetters,
    Delivery,
    DeliveryState,
    EventName,
    WebhookEvent,
    WebhookStats,
    iso_timestamp,
)

if TYPE_CHECKING:
    from genqueue.actors.generation_service import GenerationService

__all__ = [
    "DEAD_CURSOR",
    "DEAD_CURSOR_PATTERN",
    "DELIVERY_ID",
    "DELIVERY_ID_PATTERN",
    "ID_CHARS",
    "JOB_ID",
    "JOB_ID_PATTERN",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "NAME_PATTERN",
    "TERMINAL",
    "BudgetExceeded",
    "Clock",
    "Config",
    "ConfigError",
    "DataDirInUse",
    "DeadLetters",
    "Delivery",
    "DeliveryNotDead",
    "DeliveryNotFound",
    "DeliveryState",
    "EventName",
    "GenerationParams",
    "GenerationRequest",
    "GenqueueError",
    "IllegalTransition",
    "InvalidRequest",
    "Job",
    "JobFailed",
    "JobNotFound",
    "JobPage",
    "JobQueue",
    "JobResult",
    "JobStatus",
    "ManualClock",
    "Processor",
    "ProviderError",
    "ProviderList",
    "QueueFull",
    "QueueStatus",
    "RealClock",
    "Report",
    "RequestLike",
    "StorageError",
    "Submission",
    "Unauthorized",
    "Unreachable",
    "WebhookEvent",
    "WebhookStats",
    "Webhooks",
    "iso_timestamp",
    "load_config",
    "parse_request",
    "veo_processor",
]


def veo_processor(config: Config, *, clock: Clock | None = None) -> GenerationService:
    """The processor that generates videos with Veo 3 (or the built-in fake) and stores
    them; `await start()` it before the queue opens and `await close()` it after."""
    from genqueue.actors.generation_service import GenerationService  # aiobotocore: only when used

    return GenerationService(config, clock=clock)
