"""Webhook payloads on the wire (camelCase, no nulls) and the outbox record that carries them."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Literal

import msgspec

from genqueue.models import JobStatus

__all__ = [
    "Delivery",
    "DeliveryState",
    "EventName",
    "WebhookEvent",
    "WebhookResult",
    "delivery_id",
    "encode_event",
    "iso_timestamp",
    "new_delivery",
]

EventName = Literal[
    "generation.completed",
    "generation.failed",
    "generation.cancelled",
    "generation.started",
    "generation.progress",
]
DeliveryState = Literal["pending", "dead"]  # a delivered one is deleted (only counted)


class WebhookResult(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """A finished generation: `{videoUrl, duration?, processingTime?}`."""

    video_url: str
    duration: float | None = None
    processing_time: float | None = None


class WebhookEvent(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """The plan's payload: `{event, jobId, generationId, userId, status, result?, error?,
    progress?, timestamp}`; fields left as None are not sent."""

    event: EventName
    job_id: str
    generation_id: str
    user_id: str
    status: JobStatus
    timestamp: str
    result: WebhookResult | None = None
    error: str | None = None
    progress: int | None = None


class Delivery(msgspec.Struct, frozen=True):
    """One outbox record: an event, the exact bytes sent for it, and its delivery state.

    `id` is the `webhook-id`, the same on every attempt; `body` is encoded once so that a
    retry is byte-identical. New fields must get defaults (stored records evolve).
    """

    id: str
    job_id: str
    seq: int
    event: WebhookEvent
    body: bytes
    attempts: int = 0
    next_attempt_at: float = 0.0
    state: DeliveryState = "pending"
    last_status: int | None = None
    last_error: str | None = None
    created_at: float = 0.0
    # The result's videoUrl is a local video's: signed afresh at each attempt (the stored
    # body keeps the unsigned URL), so the receiver always gets a URL valid for the full TTL.
    signed_video: bool = False

    @property
    def stream(self) -> str:
        """What orders and keys the outbox's deliveries: the job record's unique generation id
        (the job id for records of versions before it was unique)."""
        return self.event.generation_id or self.job_id


_encoder = msgspec.json.Encoder()


def encode_event(ev: WebhookEvent) -> bytes:
    """The JSON body for `ev`."""
    return _encoder.encode(ev)


def iso_timestamp(now_s: float) -> str:
    """`now_s` as JavaScript's `toISOString()` writes it: `2025-01-31T12:00:00.000Z`."""
    moment = datetime.fromtimestamp(now_s, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def delivery_id(generation_id: str, seq: int) -> str:
    """A stable `webhook-id` for the `seq`-th event of a generation: `msg_` and 32 hex digits.

    From the generation id, unique per job record: a client id reused after retention
    never repeats a webhook-id (receivers de-duplicate on it). Records of older versions
    have generation id = job id, so their ids are what they always were."""
    digest = hashlib.blake2b(f"{generation_id}:{seq}".encode(), digest_size=16).hexdigest()
    return f"msg_{digest}"


def new_delivery(
    event: WebhookEvent, *, seq: int, now_s: float, signed_video: bool = False
) -> Delivery:
    """A pending Delivery of `event`, due at once, with its body encoded and its id derived."""
    return Delivery(
        signed_video=signed_video,
        id=delivery_id(event.generation_id, seq),
        job_id=event.job_id,
        seq=seq,
        event=event,
        body=encode_event(event),
        next_attempt_at=now_s,
        created_at=now_s,
    )
