"""The API's JSON shapes (server and client): a job, a page of jobs, a webhook delivery.

A stored `Job` carries internals (`checkpoint`, `seq`, the provider's operation); the
public form lists exactly the fields of DESIGN.md, every one present (absent values are
`null`), with ISO-8601 UTC times.
"""

from __future__ import annotations

from typing import Annotated, get_args

import msgspec

from genqueue import (
    MAX_SEED,
    Delivery,
    DeliveryState,
    EventName,
    GenerationParams,
    Job,
    JobResult,
    JobStatus,
    WebhookEvent,
    iso_timestamp,
)
from genqueue.models import AspectRatio, Duration, ImageInput, Resolution

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MAX_SEED",
    "STATUSES",
    "DeliveryPage",
    "JobPage",
    "PublicDelivery",
    "PublicJob",
    "encode",
    "public_delivery",
    "public_job",
]

STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
DEFAULT_LIMIT = 20  # jobs per page of GET /api/generations
MAX_LIMIT = 100

DateTime = Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]


class PublicImage(msgspec.Struct, rename="camel"):
    """An input image as a job shows it: its type and size (the bytes are not echoed)."""

    mime_type: str
    size_bytes: int


class PublicParams(msgspec.Struct, rename="camel"):
    """Video parameters, every one spelled out."""

    duration: Duration
    aspect_ratio: AspectRatio
    resolution: Resolution
    negative_prompt: str | None
    seed: int | None
    sample_count: int = 1
    generate_audio: bool | None = None
    person_generation: str | None = None
    image: PublicImage | None = None
    last_frame: PublicImage | None = None
    reference_images: list[PublicImage] | None = None


class PublicVideo(msgspec.Struct, rename="camel"):
    """One of the videos a job made."""

    video_url: str


class PublicResult(msgspec.Struct, rename="camel"):
    """The finished video."""

    video_url: str
    duration: float | None
    processing_time: float | None
    videos: list[PublicVideo] = []  # every video, the first being video_url


class PublicJob(msgspec.Struct, rename="camel"):
    """A job as `GET /api/generations/{id}` shows it."""

    id: str
    user_id: str
    status: JobStatus
    progress: int
    attempts: int
    prompt: str
    parameters: PublicParams
    provider: str
    model: str | None
    priority: int
    queue_position: int | None
    result: PublicResult | None
    error: str | None
    created_at: DateTime
    updated_at: DateTime


class JobPage(msgspec.Struct, rename="camel"):
    """One page of `GET /api/generations`, newest first; follow `nextCursor` while not null."""

    items: list[PublicJob]
    next_cursor: str | None


def public_job(job: Job) -> PublicJob:
    """The public form of `job` (as the queue gave it: a local video's URL already signed)."""
    p, r = job.parameters, job.result
    return PublicJob(
        id=job.id,
        user_id=job.user_id,
        status=job.status,
        progress=job.progress,
        attempts=job.attempts,
        prompt=job.prompt,
        parameters=public_params(p),
        provider=job.provider,
        model=job.model,
        priority=job.priority,
        queue_position=job.queue_position if job.status == "queued" else None,
        result=None if r is None else public_result(r),
        error=job.error,
        created_at=iso_timestamp(job.created_at),
        updated_at=iso_timestamp(job.updated_at),
    )


def _image(image: ImageInput | None) -> PublicImage | None:
    if image is None:
        return None
    text = image.bytes_base64_encoded
    size = len(text) * 3 // 4 - text[-2:].count("=")
    return PublicImage(image.mime_type, size)


def public_params(p: GenerationParams) -> PublicParams:
    refs = p.reference_images
    return PublicParams(
        p.duration,
        p.aspect_ratio,
        p.resolution,
        p.negative_prompt,
        p.seed,
        sample_count=p.sample_count,
        generate_audio=p.generate_audio,
        person_generation=p.person_generation,
        image=_image(p.image),
        last_frame=_image(p.last_frame),
        reference_images=None if refs is None else [_image(im) for im in refs],  # type: ignore[misc]
    )


def public_result(r: JobResult) -> PublicResult:
    urls = [v.video_url for v in r.videos] if r.videos else [r.video_url]
    return PublicResult(r.video_url, r.duration, r.processing_time, [PublicVideo(u) for u in urls])


_ENCODER = msgspec.json.Encoder()


def encode(value: object) -> bytes:
    """JSON bytes of a Struct (or of plain data)."""
    return _ENCODER.encode(value)


class PublicDelivery(msgspec.Struct, frozen=True, rename="camel"):
    """A webhook delivery as the HTTP API shows it; `payload` is the body that is sent."""

    id: str
    job_id: str
    event: EventName
    state: DeliveryState
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: str
    payload: WebhookEvent


class DeliveryPage(msgspec.Struct, frozen=True, rename="camel"):
    """`GET /api/webhooks/dead`: continue with `cursor=nextCursor` while it is not null."""

    items: list[PublicDelivery]
    next_cursor: str | None


def public_delivery(delivery: Delivery) -> PublicDelivery:
    return PublicDelivery(
        id=delivery.id,
        job_id=delivery.job_id,
        event=delivery.event.event,
        state=delivery.state,
        attempts=delivery.attempts,
        last_status=delivery.last_status,
        last_error=delivery.last_error,
        created_at=iso_timestamp(delivery.created_at),
        payload=delivery.event,
    )
