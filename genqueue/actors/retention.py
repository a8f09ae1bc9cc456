"""Retention: finished jobs older than the cutoff leave the store (record, index entries,
retention entry) in the QueueActor's turn; the caller deletes their videos (and objects)
after commit."""

from __future__ import annotations

from genqueue.actors.job import JobActor
from genqueue.actors.records import ActorStorage
from genqueue.actors.system import ActorSystem
from genqueue.models import Job
from genqueue.storage.jobindex import JobIndex

__all__ = ["remove_finished"]

BATCH = 10_000  # finished jobs one retention pass removes, at most


def remove_finished(
    system: ActorSystem, storage: ActorStorage, cutoff_ms: int
) -> tuple[int, list[Job]]:
    """Remove the jobs finished before `cutoff_ms` (the queue's `finished/` entries);
    returns how many, and the removed records (their videos and any objects kept for them
    elsewhere, e.g. sqs mode's checkpoints and cancel notices, are to be deleted)."""
    end = f"finished/{cutoff_ms:015d}"
    jobs = JobActor.table(system)
    index = JobIndex(system.store)
    removed = 0
    gone: list[Job] = []
    for key, _ in storage.list("finished/", end=end, limit=BATCH):
        job_id = key.rsplit("/", 1)[1]
        job = JobActor.read(system, job_id)
        if job is not None:
            gone.append(job)
            index.remove(job)
        for sub, _ in jobs.list(f"{job_id}/"):
            jobs.delete(sub)
        storage.delete(key)
        removed += 1
    return removed, gone
