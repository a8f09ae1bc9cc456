"""genqueue: a durable, actor-model job queue for AI video generation."""

from genqueue.config import Config, load_config
from genqueue.errors import (
    BudgetExceeded,
    DataDirInUse,
    GenqueueError,
    IllegalTransition,
    InvalidRequest,
    JobNotFound,
    ProviderError,
    QueueFull,
    StorageError,
)
from genqueue.jobqueue import JobQueue
from genqueue.models import GenerationParams, GenerationRequest, Job, JobResult, QueueStatus

__all__ = [
    "BudgetExceeded",
    "Config",
    "DataDirInUse",
    "GenerationParams",
    "GenerationRequest",
    "GenqueueError",
    "IllegalTransition",
    "InvalidRequest",
    "Job",
    "JobNotFound",
    "JobQueue",
    "JobResult",
    "ProviderError",
    "QueueFull",
    "QueueStatus",
    "StorageError",
    "load_config",
]
