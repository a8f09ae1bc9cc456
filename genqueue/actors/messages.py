"""Messages between the queue's actors: frozen, tagged Structs (pykka does not copy them), data
only, so untracked by the cyclic garbage collector (`gc=False`, as genqueue.models)."""

from __future__ import annotations

from typing import Any

import msgspec

from genqueue.models import Job, JobStatus

__all__ = [
    "Accepted",
    "Cancel",
    "Finished",
    "GetJob",
    "PauseDispatch",
    "Recover",
    "Remove",
    "Report",
    "Requeue",
    "Start",
    "Status",
    "Submit",
    "SubmitMany",
    "TimedOut",
]


class Msg(msgspec.Struct, frozen=True, tag=True, gc=False):
    """Base of every queue message."""


# -- to the QueueActor ---------------------------------------------------------------------


class Submit(Msg, frozen=True):
    job: Job
    client_id: bool = True  # a client-chosen id may exist already: check (idempotency)


class SubmitMany(Msg, frozen=True):
    """Submissions that arrived together: one turn, one commit, one answer each."""

    submissions: tuple[Submit, ...]


class Finished(Msg, frozen=True):
    """A job left the processing state (ended, or waits for a retry)."""

    job_id: str
    user_id: str
    status: JobStatus
    wait_s: float | None = None
    processing_s: float | None = None
    cost: float = 0.0  # what its paid starts cost (terminal reports only)
    provider: str = ""


class Requeue(Msg, frozen=True):
    """A job's retry backoff is over: put it back in its place."""

    job_id: str
    user_id: str
    priority: int
    seq: int
    provider: str = "veo3"


class Remove(Msg, frozen=True):
    """A queued job, or one waiting to retry (`was`), was cancelled."""

    job_id: str
    priority: int
    seq: int
    user_id: str = ""
    was: str = "queued"


class PauseDispatch(Msg, frozen=True):
    """The provider answered 429: start nothing before `until`. `reason`: "rate_limit"
    (per minute) or "quota" (the provider's daily quota)."""

    until: float
    reason: str = "rate_limit"
    provider: str = "veo3"  # only this provider's jobs wait
    # False: a notice while the job still retries (sqs mode's worker tells each start's
    # 429 at once), never taken as a quota that keeps coming back; a job's end decides that
    promote: bool = True


class Accepted(Msg, frozen=True):
    """A running job's processor stored a checkpoint with progress: the provider accepted
    its work (a successful start), so a later 429 is a new per-minute limit, not a spent
    quota."""

    job_id: str


class Status(Msg, frozen=True):
    pass


# -- to a JobActor -------------------------------------------------------------------------


class Start(Msg, frozen=True):
    wait_s: float | None = None
    provider: str = ""  # the provider the queue dispatched it to (a fallback, maybe)


class Recover(Msg, frozen=True):
    """After a restart: you were dispatched; resume, or say how you ended."""


class TimedOut(Msg, frozen=True):
    """From the queue's watchdog: you have been processing past `job_watchdog_s`."""


class Report(Msg, frozen=True):
    progress: int | None = None
    checkpoint: Any = None


class Cancel(Msg, frozen=True):
    reason: str = "cancelled by request"


class GetJob(Msg, frozen=True):
    pass
