"""The S3 board in sqs mode, against moto's server: a job's images travel through it (a
work message stays small), cancel notices belong to one job record, and retention deletes
a removed job's videos and board objects."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers_jobs import a_job
from helpers_procs import make_bucket, s3_objects

from genqueue.cluster import attempt
from genqueue.cluster.coordinator import MAX_WORK_BYTES, Coordinator
from genqueue.cluster.messages import Work, decode_work
from genqueue.cluster.worker import Worker, WorkerRun
from genqueue.config import Config
from genqueue.models import (
    GenerationParams,
    GenerationRequest,
    ImageInput,
    Job,
    JobResult,
    validate_request,
)


def _config(moto: str, tmp_path: Path) -> Config:
    bucket = "board-" + uuid.uuid4().hex[:8]
    make_bucket(moto, bucket)
    return Config(
        data_dir=str(tmp_path),
        dispatch="sqs",
        storage="s3",
        s3_bucket=bucket,
        s3_endpoint_url=moto,
        sqs_endpoint_url=moto,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_region="us-east-1",
    )


def _job(params: GenerationParams, generation_id: str = "g1", **kw: Any) -> Job:
    return a_job(
        **{
            "id": "order-1",
            "generation_id": generation_id,
            "prompt": "a cat",
            "parameters": params,
            "status": "processing",
            "attempts": 1,
            **kw,
        }
    )


class SentWork:
    def __init__(self) -> None:
        self.bodies: list[str] = []

    async def send(self, queue: str, body: str, group: str, dedup: str | None = None) -> None:
        self.bodies.append(body)


def test_an_image_job_reaches_its_worker_through_the_board(
    moto_endpoint: str, tmp_path: Path
) -> None:
    image = ImageInput(base64.b64encode(os.urandom(300_000)).decode(), "image/jpeg")
    params = GenerationParams(image=image, duration=8)
    validate_request(GenerationRequest(prompt="a cat", parameters=params))  # the API takes it
    cfg = _config(moto_endpoint, tmp_path)
    job = _job(params)
    seen: list[GenerationParams] = []

    async def workflow(j: Job, report: Any) -> JobResult:
        seen.append(j.parameters)
        return JobResult(video_url="u", duration=8.0)

    async def main() -> tuple[str, Any, bytes | None]:
        co = Coordinator(cfg)
        sent = SentWork()
        co.queues = sent  # type: ignore[assignment]
        await co.board.start()
        worker = Worker(cfg)
        worker.service = workflow  # type: ignore[assignment]
        await worker.board.start()
        try:
            await co._send_work(job, None)
            work = decode_work(sent.bodies[0])
            outcome = await attempt.generate(worker, WorkerRun(work, "h"))
            co.job_ended(msgspec.structs.replace(job, status="completed"))
            await asyncio.gather(*co._tasks)
            return sent.bodies[0], outcome, await co.board.get_input(job.generation_id)
        finally:
            await worker.board.close()
            await co.board.close()

    body, outcome, left = asyncio.run(main())
    assert len(body.encode()) < MAX_WORK_BYTES // 4
    assert decode_work(body).job.parameters.image is None
    assert outcome.result is not None, outcome.error
    assert seen == [params]  # the worker ran the job with its image
    assert left is None  # the job ended: its input is gone


def test_a_cancel_notice_belongs_to_one_job_record(moto_endpoint: str, tmp_path: Path) -> None:
    """A client id reused after retention: the old record's cancel notice does not stop
    the new record's attempt of the same number."""
    cfg = _config(moto_endpoint, tmp_path)
    ran: list[str] = []

    async def workflow(j: Job, report: Any) -> JobResult:
        ran.append(j.generation_id)
        return JobResult(video_url="u", duration=8.0)

    async def main() -> tuple[Any, Any, set[tuple[str, int]]]:
        worker = Worker(cfg)
        worker.service = workflow  # type: ignore[assignment]
        await worker.board.start()
        try:
            await worker.board.cancel("gen-old", 1)
            new = Work(job=_job(GenerationParams(), "gen-new"), attempt=1)
            old = Work(job=_job(GenerationParams(), "gen-old"), attempt=1)
            out_new = await attempt.generate(worker, WorkerRun(new, "h1"))
            with pytest.raises(attempt.CancelledByCoordinator):
                await attempt.generate(worker, WorkerRun(old, "h2"))
            out_old = attempt.outcome(worker, WorkerRun(old, "h2"), error=attempt.cancelled())
            return out_new, out_old, await worker.board.cancels()
        finally:
            await worker.board.close()

    out_new, out_old, cancels = asyncio.run(main())
    assert out_new.result is not None and ran == ["gen-new"]
    assert out_old.generation_id == "gen-old"  # the notice the coordinator then deletes
    assert cancels == {("gen-old", 1)}


def test_retention_deletes_the_videos_and_board_objects_in_sqs_mode(
    moto_endpoint: str, tmp_path: Path
) -> None:
    cfg = _config(moto_endpoint, tmp_path)
    result = JobResult(video_url="u", duration=8.0, video_key="videos/u/abc.mp4", private=True)
    removed = _job(GenerationParams(), "gen-1", status="completed", result=result)
    cancelled = _job(GenerationParams(), "gen-3", status="cancelled")  # no video

    async def main() -> dict[str, bytes]:
        co = Coordinator(cfg)
        await co.board.start()
        try:
            s3 = co.board._s3
            for key in ("videos/u/abc.mp4", "videos/u/keep.mp4"):
                await s3.put_object(Bucket=cfg.s3_bucket, Key=key, Body=b"mp4")
            await co.board.put_checkpoint("gen-1", 1, {"operation": "op"})
            await co.board.put_checkpoint("gen-2", 1, {"operation": "op2"})
            await co.board.put_input("gen-1", b"{}")
            await co.board.cancel("gen-1", 1)
            await co.board.put_checkpoint("gen-3", 2, {"operation": "op3"})
            await co.board.cancel("gen-3", 2)
            await co.delete_videos([removed, cancelled])
        finally:
            await co.board.close()
        return await s3_objects(moto_endpoint, cfg.s3_bucket)

    left = asyncio.run(main())
    root = f"_genqueue/{cfg.sqs_prefix}/"
    assert sorted(left) == [f"{root}checkpoints/gen-2", "videos/u/keep.mp4"]
