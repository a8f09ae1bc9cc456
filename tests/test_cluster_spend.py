"""sqs mode: what a paid start costs, and that no fallback follows it, read from the
checkpoint the coordinator stores (the generation's own under "work", beside the attempt
and dispatch: coordinator.py RemoteRun.save), as from the one-machine processor's."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from helpers_queue import Watcher, queue_factory, request

from genqueue import Job, JobResult, ProviderError
from genqueue.cluster.coordinator import RemoteRun, dispatch_of

# What GenerationActor._start reports after a paid start (its GenerationCheckpoint).
PAID = {"operation": "models/x/operations/op1", "started_at": 1.0, "starts": 1, "spent": 3.2}
UNPAID = {"operation": None, "started_at": None, "starts": 0, "spent": 0.0}
REFUSED = ProviderError("no such model", retryable=False, status=404, code="model_not_found")


async def as_one_machine(job: Job, report: Any, work: Any) -> None:
    await report(progress=5, checkpoint=work)


async def as_the_coordinator(job: Job, report: Any, work: Any) -> None:
    """The coordinator's saves: at dispatch, then at a worker's Checkpoint event."""
    run = RemoteRun(job.id, job.attempts, report, asyncio.get_running_loop().create_future())
    run.dispatch = dispatch_of(job)
    await run.save()
    run.work = work
    await run.save(5)


@pytest.mark.parametrize("store", [as_one_machine, as_the_coordinator])
def test_a_paid_start_is_charged_when_the_job_ends(tmp_path: Path, store: Any) -> None:
    async def processor(job: Job, report: Any) -> JobResult:
        await store(job, report, PAID)
        return JobResult(video_url=f"memory://{job.id}.mp4", duration=8)

    with queue_factory(tmp_path) as queues:
        q = queues.open(processor)
        job, _ = q.submit(request(id="paid"), user_id="alice")
        assert q.wait(job.id, timeout_s=20).status == "completed"
        spend = q.status().spend
    assert spend["total"] == pytest.approx(3.2), spend
    assert spend["byUserToday"] == {"alice": pytest.approx(3.2)}, spend


@pytest.mark.parametrize("store", [as_one_machine, as_the_coordinator])
def test_no_fallback_follows_a_paid_start(tmp_path: Path, store: Any) -> None:
    """A refusal of the model after a paid start fails the job; before one, the job moves
    on to the caller's next provider."""

    async def processor(job: Job, report: Any) -> JobResult:
        if job.provider == "fal":
            await store(job, report, PAID if job.id == "paid" else UNPAID)
            raise REFUSED
        return JobResult(video_url=f"memory://{job.id}.mp4", duration=8)

    with queue_factory(tmp_path) as queues:
        q = queues.open(processor, max_attempts=1)
        w = Watcher(q)
        for job_id in ("paid", "unpaid"):
            q.submit(request(id=job_id, provider=["fal", "veo"]))
        paid = w.wait_status("paid", "completed", "failed")
        unpaid = w.wait_status("unpaid", "completed", "failed")
    assert (paid.status, paid.provider) == ("failed", "fal")
    assert (unpaid.status, unpaid.provider) == ("completed", "veo3")
