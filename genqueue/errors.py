"""The one tree of genqueue's exceptions."""

from __future__ import annotations

__all__ = [
    "BudgetExceeded",
    "ConfigError",
    "DataDirInUse",
    "DeliveryNotDead",
    "DeliveryNotFound",
    "GenqueueError",
    "IllegalTransition",
    "InvalidRequest",
    "JobFailed",
    "JobNotFound",
    "ProviderError",
    "QueueFull",
    "StorageError",
    "Unauthorized",
    "Unreachable",
]


class GenqueueError(Exception):
    """Base of every error genqueue raises on purpose."""

    status: int | None = None  # the HTTP status, when a client got it from a server


class ConfigError(GenqueueError):
    """A configuration key is unknown or its value is bad (the message names the key)."""


class DataDirInUse(GenqueueError):
    """Another open queue (this process or another) owns the data directory."""

    def __init__(self, data_dir: object, pid: int | None = None):
        holder = f" (pid {pid})" if pid is not None else ""
        super().__init__(
            f"another genqueue queue{holder} is using the data directory {data_dir}:"
            " one process, and one open JobQueue, per data directory"
        )
        self.data_dir = str(data_dir)
        self.pid = pid


class InvalidRequest(GenqueueError):
    """A request failed validation; `field` names the offending field when known."""

    def __init__(self, message: str, field: str | None = None, code: str = "invalid_request"):
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code


class QueueFull(GenqueueError):
    """A submission would pass `max_queued` or, for its user, `max_queued_per_user`."""

    def __init__(self, message: str, *, limit: int | None = None, user: bool = False):
        super().__init__(message)
        self.message = message
        self.limit = limit  # None: not known (a client's: the server's answer names it)
        self.user = user  # the user's own cap (else the queue's)


class BudgetExceeded(QueueFull):
    """A submission would pass its user's daily budget (committed and in-flight spend)."""


class JobNotFound(GenqueueError):
    """No job has this id (or the caller may not see it)."""


class JobFailed(GenqueueError):
    """`result` of a job that ended without one (failed or cancelled); `job` is its record."""

    def __init__(self, job: object):
        status, error = getattr(job, "status", "?"), getattr(job, "error", None)
        super().__init__(f"job {getattr(job, 'id', '?')} {status}: {error or 'no reason given'}")
        self.job = job


class DeliveryNotFound(GenqueueError):
    """No dead-lettered or pending webhook delivery has this id (delivered ones are not kept)."""


class DeliveryNotDead(GenqueueError):
    """The delivery exists but is still pending: only a dead-lettered one can be replayed."""


class IllegalTransition(GenqueueError):
    """A job state change that the state machine refuses."""


class StorageError(GenqueueError):
    """The state store or the video store could not do what was asked."""


class ProviderError(GenqueueError):
    """The video provider refused or failed; `retryable` says whether trying again may help."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after_s: float | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after_s = retry_after_s
        self.code = code


class Unauthorized(GenqueueError):
    """The server refused the client's API key (or the key may not do this)."""


class Unreachable(GenqueueError):
    """No genqueue server answered the client (refused, timed out, or not HTTP)."""
