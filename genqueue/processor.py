"""What does a job's work: a `Processor`, given the job and a `Report` to record progress.

    async def process(job: Job, report: Report) -> JobResult:
        await report(progress=50, checkpoint={"step": "half"})  # durable before it returns
        return JobResult(video_url=...)

A resumed job (after a crash) gets its last `checkpoint` back as `job.checkpoint`. A
checkpoint is plain data (what `msgspec.to_builtins` takes); `report` keeps a copy, so
changing the object afterwards changes nothing stored.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from genqueue.models import Job, JobResult

__all__ = ["Processor", "Report", "stored_copy"]


class Report(Protocol):
    """Records a job's progress (0-100) and/or checkpoint; stored before it returns."""

    async def __call__(self, progress: int | None = None, checkpoint: Any = None) -> None: ...


class Processor(Protocol):
    """Does the work of a job. `report(progress=, checkpoint=)` is stored before it returns."""

    async def __call__(self, job: Job, report: Report) -> JobResult: ...


def stored_copy(checkpoint: Any) -> Any:
    """What `report` stores of a checkpoint: a copy in plain data, so the caller's later edits
    change nothing; TypeError for a value the store cannot hold, RecursionError for a cycle."""
    return None if checkpoint is None else msgspec.to_builtins(checkpoint)
