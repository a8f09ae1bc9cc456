"""What travels on SQS: the work message and the events, as msgspec Structs (JSON).

Every message names its job and its attempt (the JobActor's `attempts` when it was
dispatched). The coordinator applies an event only while the job is processing that same
attempt: a duplicate, a late message or one of an earlier attempt changes nothing.
"""

from __future__ import annotations

from typing import Any

import msgspec

from genqueue.models import GenerationParams, Job, JobResult

__all__ = [
    "Checkpoint",
    "ErrorInfo",
    "Event",
    "Heartbeat",
    "JobBeat",
    "Outcome",
    "RateLimited",
    "Work",
    "decode_event",
    "decode_params",
    "decode_work",
    "encode",
    "encode_params",
]


class Work(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of one job, for a worker (immutable once sent)."""

    job: Job
    attempt: int
    checkpoint: Any = None  # the generation's checkpoint the coordinator held at dispatch
    sent_at: float = 0.0
    # The job's parameters are on the board (`inputs/{generation_id}`), its images too large
    # for SQS; `job.parameters` here is without its images.
    input_on_board: bool = False


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A ProviderError, as the worker saw it."""

    message: str
    retryable: bool
    status: int | None = None
    retry_after_s: float | None = None
    code: str | None = None


class Checkpoint(msgspec.Struct, frozen=True, tag="checkpoint", kw_only=True):
    """The generation's checkpoint (the paid operation's name), sent before anything that
    would be paid again if it were lost."""

    job_id: str
    attempt: int
    worker_id: str
    checkpoint: Any
    progress: int | None = None


class Outcome(msgspec.Struct, frozen=True, tag="outcome", kw_only=True):
    """How an attempt ended: a result, or an error (`error.code == "cancelled"` when the
    worker stopped it at the coordinator's request)."""

    job_id: str
    attempt: int
    worker_id: str
    result: JobResult | None = None
    error: ErrorInfo | None = None
    generation_id: str = ""  # (names the attempt's cancel notice on the board)


class RateLimited(msgspec.Struct, frozen=True, tag="rate_limited", kw_only=True):
    """A worker's start saw a 429: the coordinator pauses that provider's dispatch for
    `retry_after_s` from `seen_at` (the worker's wall clock; None from an older worker:
    from when it is applied). Applied late, after that pause is over, it changes nothing."""

    worker_id: str
    retry_after_s: float
    provider: str = "veo3"
    seen_at: float | None = None


class JobBeat(msgspec.Struct, frozen=True):
    job_id: str
    attempt: int
    progress: int


class Heartbeat(msgspec.Struct, frozen=True, tag="heartbeat", kw_only=True):
    """A worker is alive: what it holds and how far each job is (progress rides here)."""

    worker_id: str
    host: str
    concurrency: int
    jobs: tuple[JobBeat, ...] = ()
    sent_at: float = 0.0
    stopping: bool = False
    sqs_requests: int = 0  # made by this worker so far (the benchmark reads them)


Event = Checkpoint | Outcome | RateLimited | Heartbeat

_WORK = msgspec.json.Decoder(Work)
_EVENT = msgspec.json.Decoder(Event)
_ENCODER = msgspec.json.Encoder()


def encode(message: Work | Event) -> str:
    return _ENCODER.encode(message).decode()


def decode_work(body: str) -> Work:
    return _WORK.decode(body)


def decode_event(body: str) -> Event:
    return _EVENT.decode(body)


_PARAMS = msgspec.json.Decoder(GenerationParams)


def encode_params(params: GenerationParams) -> bytes:
    """A job's parameters (with its images) as they are kept on the board."""
    return _ENCODER.encode(params)


def decode_params(data: bytes) -> GenerationParams:
    return _PARAMS.decode(data)
