"""A job's route: the provider a dispatch sends it to, the caller's next provider when its
own refuses the model, and what a dispatch changes in its record. A fallback never
follows a paid start (the generation's checkpoint counts its `starts`)."""

from __future__ import annotations

from typing import Any

import msgspec

from genqueue.models import Job, Route

__all__ = ["dispatched", "generation_checkpoint", "next_route", "routed"]


def generation_checkpoint(job: Job) -> dict[str, Any]:
    """The generation's own checkpoint of a job (its `starts`, `spent`, `operation`): the
    job's checkpoint, or in sqs mode the one the coordinator stores under "work", beside
    the attempt and dispatch it was sent with (cluster/coordinator.py RemoteRun.save)."""
    ckpt = job.checkpoint
    if isinstance(ckpt, dict) and "work" in ckpt and "attempt" in ckpt:
        ckpt = ckpt["work"]
    return ckpt if isinstance(ckpt, dict) else {}


def next_route(job: Job) -> Route | None:
    """The caller's next provider after the job's own, unless a start was paid."""
    paid = generation_checkpoint(job).get("starts", 0) > 0
    names = [r.provider for r in job.routes or []]
    if paid or job.provider not in names:
        return None
    rest = (job.routes or [])[names.index(job.provider) + 1 :]
    return rest[0] if rest else None


def routed(job: Job, provider: str) -> Job:
    """The job on the provider the queue chose (a fallback of the caller's list), unless it
    already paid a start where it is: a fallback never follows a paid start."""
    if not provider or provider == job.provider or not job.routes:
        return job
    paid = generation_checkpoint(job).get("starts", 0) > 0
    route = next((r for r in job.routes if r.provider == provider), None)
    if paid or route is None:
        return job
    return msgspec.structs.replace(
        job, provider=route.provider, model=route.model, estimated_cost=route.cost
    )


def dispatched(job: Job, now: float) -> dict[str, Any]:
    """What a dispatch changes in a job's record (its Start turn's, or the queue's)."""
    return {"attempts": job.attempts + 1, "started_at": now, "queue_position": None}
