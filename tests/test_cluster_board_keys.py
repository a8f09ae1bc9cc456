"""The board's checkpoints belong to one job record: a client id reused after retention
(a new generation id, attempts from 1 again) neither resumes its predecessor's Veo
operation (that video, another prompt, maybe another user's) nor is dropped as a late
message of an earlier attempt."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from helpers_jobs import a_job

from genqueue.cluster import attempt
from genqueue.cluster.messages import Work
from genqueue.cluster.transport import BoardCheckpoint
from genqueue.cluster.worker import Worker, WorkerRun
from genqueue.config import Config
from genqueue.models import Job, JobResult


class MemoryBoard:
    def __init__(self) -> None:
        self.data: dict[str, BoardCheckpoint] = {}

    async def is_cancelled(self, job_id: str, attempt: int) -> bool:
        return False

    async def get_checkpoint(self, key: str) -> BoardCheckpoint | None:
        return self.data.get(key)

    async def put_checkpoint(self, key: str, attempt: int, checkpoint: Any) -> None:
        self.data[key] = BoardCheckpoint(attempt, checkpoint)


def _job(generation_id: str, user_id: str, attempts: int = 1) -> Job:
    return a_job(
        id="order-1",
        generation_id=generation_id,
        user_id=user_id,
        prompt="a prompt",
        status="processing",
        attempts=attempts,
    )


def _run_attempts(tmp_path: Path, *works: Work) -> tuple[list[Any], list[Any], MemoryBoard]:
    """Each work through Worker._generate, whose workflow checkpoints an operation named
    after the generation; returns the checkpoints each run started from, and the outcomes."""
    seen: list[Any] = []

    async def workflow(job: Job, report: Any) -> JobResult:
        seen.append(job.checkpoint)
        await report(checkpoint={"operation": f"op-of-{job.generation_id}"})
        return JobResult(video_url="u", duration=8.0)

    async def main() -> tuple[list[Any], MemoryBoard]:
        worker = Worker(Config(data_dir=str(tmp_path), storage="s3", s3_bucket="b"))
        board = MemoryBoard()
        worker.board = board  # type: ignore[assignment]
        worker.service = workflow  # type: ignore[assignment]

        async def send(event: Any, group: str, dedup: str = "") -> None:
            return None

        worker.send = send  # type: ignore[method-assign]
        outcomes = [
            await attempt.generate(worker, WorkerRun(w, f"h{i}")) for i, w in enumerate(works)
        ]
        return outcomes, board

    outcomes, board = asyncio.run(main())
    return seen, outcomes, board


def test_a_reused_client_id_starts_fresh(tmp_path: Path) -> None:
    old = Work(job=_job("gen-alice", "alice"), attempt=1)
    new = Work(job=_job("gen-bob", "bob"), attempt=1)  # same id, after retention
    seen, outcomes, board = _run_attempts(tmp_path, old, new)
    assert seen == [None, None]  # bob's generation never sees alice's operation
    assert all(o is not None and o.result is not None for o in outcomes)
    assert board.data["gen-bob"].checkpoint == {"operation": "op-of-gen-bob"}


def test_a_reused_client_id_is_not_taken_for_a_late_message(tmp_path: Path) -> None:
    old = Work(job=_job("gen-alice", "alice", attempts=3), attempt=3)
    new = Work(job=_job("gen-bob", "bob"), attempt=1)
    seen, outcomes, _ = _run_attempts(tmp_path, old, new)
    assert outcomes[1] is not None and outcomes[1].result is not None
    assert len(seen) == 2


def test_a_redelivered_attempt_still_resumes_its_own_checkpoint(tmp_path: Path) -> None:
    """The guarantee the key must keep: the same attempt delivered again (its worker died)
    polls the operation its predecessor checkpointed."""
    work = Work(job=_job("gen-alice", "alice"), attempt=1)
    seen, _, _ = _run_attempts(tmp_path, work, work)
    assert seen == [None, {"operation": "op-of-gen-alice"}]
