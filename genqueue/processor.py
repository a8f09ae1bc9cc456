"""What does a job's work: a `Processor`, given the job and a `Report` to record progress.

    async def process(job: Job, report: Report) -> JobResult:
        await report(progress=50, checkpoint={"step": "half"})  # durable before it returns
        return JobResult(video_url=...)

A resumed job (after a crash) gets its last `checkpoint` back as `job.checkpoint`.
"""

from __future__ import annotations

from typing import Any, Protocol

from genqueue.models import Job, JobResult

__all__ = ["Processor", "Report"]


class Report(Protocol):
    """Records a job's progress (0-100) and/or checkpoint; stored before it returns."""

    async def __call__(self, progress: int | None = None, checkpoint: Any = None) -> None: ...


class Processor(Protocol):
    """Does the work of a job. `report(progress=, checkpoint=)` is stored before it returns."""

    async def __call__(self, job: Job, report: Report) -> JobResult: ...
