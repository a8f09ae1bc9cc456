"""The server's answers as JobQueue's models and errors: a client returns and raises what
an embedded queue would."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any, TypeVar

import msgspec
import orjson

from genqueue.errors import (
    BudgetExceeded,
    DeliveryNotDead,
    DeliveryNotFound,
    GenqueueError,
    IllegalTransition,
    InvalidRequest,
    JobNotFound,
    QueueFull,
    StorageError,
    Unauthorized,
)
from genqueue.models import GenerationParams, Job, JobResult, VideoOutput
from genqueue.webhooks import Delivery, encode_event
from genqueue.wire import PublicDelivery, PublicJob, PublicResult

__all__ = ["code_of", "decode", "delivery", "error_for", "job"]

T = TypeVar("T")


def job(p: PublicJob) -> Job:
    """A Job from the API's public form. Input images are not echoed by the API (only
    their type and size): they are None here."""
    params = p.parameters
    return Job(
        id=p.id,
        generation_id="",  # not shown by the API
        user_id=p.user_id,
        prompt=p.prompt,
        parameters=GenerationParams(
            params.duration,
            params.aspect_ratio,
            params.resolution,
            params.negative_prompt,
            params.seed,
            sample_count=params.sample_count,
            generate_audio=params.generate_audio,
            person_generation=params.person_generation,  # type: ignore[arg-type]
        ),
        provider=p.provider,
        model=p.model,
        priority=p.priority,
        created_at=_seconds(p.created_at),
        updated_at=_seconds(p.updated_at),
        status=p.status,
        progress=p.progress,
        attempts=p.attempts,
        queue_position=p.queue_position,
        result=None if p.result is None else _result(p.result),
        error=p.error,
    )


def _result(r: PublicResult) -> JobResult:
    videos = [VideoOutput(v.video_url) for v in r.videos] if len(r.videos) > 1 else None
    return JobResult(r.video_url, r.duration, r.processing_time, videos=videos)


def delivery(d: PublicDelivery) -> Delivery:
    return Delivery(
        id=d.id,
        job_id=d.job_id,
        seq=0,  # not shown by the API
        event=d.payload,
        body=encode_event(d.payload),
        attempts=d.attempts,
        state=d.state,
        last_status=d.last_status,
        last_error=d.last_error,
        created_at=_seconds(d.created_at),
    )


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def decode(decoder: msgspec.json.Decoder[T], raw: bytes) -> T:
    """The answer as the API's type; GenqueueError (showing what came, escaped by the caller
    that prints it) when it is not the API's answer (another server, or a tampered one)."""
    try:
        return decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        try:
            shown: object = orjson.loads(raw)
        except orjson.JSONDecodeError:
            shown = raw[:300]
        message = f"the server's answer is not genqueue's API ({exc}): {shown!r:.300}"
        raise GenqueueError(message) from exc


def _detail(raw: bytes) -> dict[str, Any]:
    """The answer's `error` object (empty when it has none)."""
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
        detail = orjson.loads(raw).get("error")
        if isinstance(detail, dict):
            return detail
    return {}


def code_of(raw: bytes) -> str:
    """The error code of an error answer ("" when it has none)."""
    return str(_detail(raw).get("code") or "")


def error_for(status: int, raw: bytes, path: str) -> GenqueueError:
    """The error JobQueue raises for what the server answered; its `status` is the HTTP
    status (the CLI's exit code follows it)."""
    error = _error(status, raw, path)
    error.status = status
    return error


def _error(status: int, raw: bytes, path: str) -> GenqueueError:
    detail = _detail(raw)
    message = str(detail.get("message") or raw.decode("utf-8", "replace")[:200] or status)
    code = str(detail.get("code") or "")
    if status == 401:
        return Unauthorized(f"the API key was refused: {message}")
    if status == 403:
        return Unauthorized(f"the API key may not do this: {message}")
    if code == "budget_exceeded":
        return BudgetExceeded(message)
    if code == "queue_full":
        return QueueFull(message)
    if status == 400 or code == "id_conflict":
        return InvalidRequest(message, field=detail.get("field"), code=code or "invalid_request")
    webhook = path.startswith("/api/webhooks/")
    if status == 404:
        return DeliveryNotFound(message) if webhook else JobNotFound(message)
    if status == 409:
        return DeliveryNotDead(message) if webhook else IllegalTransition(message)
    if status == 503:
        return StorageError(message)
    return GenqueueError(f"genqueue answered {status}: {message}")
