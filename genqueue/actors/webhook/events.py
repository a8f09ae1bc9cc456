"""Recording a job's webhook event in the turn that stores its change (same commit as the job)."""

from __future__ import annotations

from genqueue.actors.webhook.messages import _TERMINAL_EVENTS, KEY, KIND, TERMINAL_SEQ
from genqueue.config import Config
from genqueue.models import Job
from genqueue.storage.state import StateStore
from genqueue.storage.videourls import private_video_key
from genqueue.webhooks import (
    Delivery,
    EventName,
    WebhookEvent,
    WebhookResult,
    iso_timestamp,
    new_delivery,
)

# -- recording an event (in the turn that stores the job's change) ------------------------

__all__ = ["build_delivery", "dead_key", "event_seq", "pending_key", "record_event"]


def event_seq(job: Job, *, progress_event: bool = False) -> int | None:
    """The per-job sequence number of the event `job`'s new state raises, or None.

    Derived from the state, so a turn re-run after a crash gives the same webhook-id.
    """
    if job.status in _TERMINAL_EVENTS:
        return TERMINAL_SEQ
    if job.status == "processing":
        return job.attempts * 1000 + (1 + job.progress if progress_event else 0)
    return None


def _event_name(job: Job, config: Config, progress_event: bool) -> EventName | None:
    name = _TERMINAL_EVENTS.get(job.status)
    if name is not None:
        return name
    if job.status != "processing":
        return None
    if progress_event:
        return "generation.progress" if config.webhook_events_progress else None
    return "generation.started" if config.webhook_events_started else None


def _event(job: Job, name: EventName, now_s: float) -> WebhookEvent:
    result = None
    if job.result is not None:
        processing = job.result.processing_time
        if processing is None and job.finished_at is not None and job.started_at is not None:
            processing = job.finished_at - job.started_at
        result = WebhookResult(job.result.video_url, job.result.duration, processing)
    return WebhookEvent(
        event=name,
        job_id=job.id,
        generation_id=job.generation_id,
        user_id=job.user_id,
        status=job.status,
        timestamp=iso_timestamp(now_s),
        result=result,
        error=job.error if job.status in ("failed", "cancelled") else None,
        progress=job.progress if name == "generation.progress" else None,
    )


def pending_key(job_id: str, seq: int) -> str:
    return f"p/{job_id}/{seq:07d}"


def dead_key(job_id: str, seq: int) -> str:
    return f"d/{job_id}/{seq:07d}"


def build_delivery(job: Job, config: Config, *, progress_event: bool = False) -> Delivery | None:
    """The Delivery of the event `job`'s new state raises, if it is enabled, else None.

    A function of the record alone (the event is dated by `job.updated_at`), so the
    WebhookActor rebuilds the very bytes `record_event` stored without reading them.
    """
    name = _event_name(job, config, progress_event)
    seq = event_seq(job, progress_event=progress_event)
    if name is None or seq is None:
        return None
    signed = private_video_key(job, config.storage) is not None
    event = _event(job, name, job.updated_at)
    return new_delivery(event, seq=seq, now_s=job.updated_at, signed_video=signed)


def record_event(
    store: StateStore, job: Job, config: Config, *, progress_event: bool = False
) -> int | None:
    """Store the Delivery for `job`'s new state, if it raises an enabled event.

    Called inside the turn that stores the job's change (its JobActor's, or the queue's that
    creates it started); returns the write's sequence number (for the gate).
    The record dates the event (`job.updated_at`).
    """
    delivery = build_delivery(job, config, progress_event=progress_event)
    if delivery is None:
        return None
    return store.namespace(KIND).put(
        f"{KEY}/{pending_key(job.generation_id, delivery.seq)}", delivery
    )
