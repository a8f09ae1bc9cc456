"""A worker never loses a paid start: the board's checkpoint of an earlier attempt is
resumed, a checkpoint is retried while the lease holds, SIGTERM waits as long as a start
may take, a lost lease waits for the start in flight, and a start cut anyway is counted."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers_jobs import a_job

import genqueue.cluster.starts as starts_mod
import genqueue.cluster.worker as worker_mod
from genqueue.actors.generation import GenerationActor
from genqueue.cluster import attempt
from genqueue.cluster.messages import Work, decode_event
from genqueue.cluster.starts import RUN, ClientSpy, WorkerRun, start_grace_s
from genqueue.cluster.transport import BoardCheckpoint
from genqueue.cluster.worker import Worker
from genqueue.config import Config
from genqueue.errors import ProviderError
from genqueue.models import Job
from genqueue.providers.veo import Operation, VideoRef
from genqueue.storage.videos import LocalStore


class MemoryBoard:
    def __init__(self) -> None:
        self.data: dict[str, BoardCheckpoint] = {}

    async def is_cancelled(self, key: str, attempt: int) -> bool:
        return False

    async def get_checkpoint(self, key: str) -> BoardCheckpoint | None:
        return self.data.get(key)

    async def put_checkpoint(self, key: str, attempt: int, checkpoint: Any) -> None:
        self.data[key] = BoardCheckpoint(attempt, checkpoint)


class FlakyQueues:
    """Sends of Checkpoint events fail `fail_checkpoints` times (-1: always)."""

    def __init__(self, fail_checkpoints: int) -> None:
        self.sent: list[Any] = []
        self.fail_checkpoints = fail_checkpoints
        self.lease_s = 60
        self.handed_back: list[str] = []

    async def send(self, queue: str, body: str, group: str, dedup: str | None = None) -> None:
        event = decode_event(body)
        if type(event).__name__ == "Checkpoint" and self.fail_checkpoints != 0:
            self.fail_checkpoints -= 1
            raise ConnectionError("SQS unavailable")
        self.sent.append(event)

    async def set_visibility(self, queue: str, handle: str, visibility_s: int) -> None:
        self.handed_back.append(handle)


class FakeVeo:
    def __init__(self, start_s: float = 0.0, request_timeout_s: float = 60.0) -> None:
        self.starts = 0
        self.start_s = start_s
        self.request_timeout_s = request_timeout_s

    async def start(self, prompt: str, params: Any, *, model: str | None = None) -> str:
        self.starts += 1  # paid from here
        await asyncio.sleep(self.start_s)
        return f"models/veo/operations/op-{self.starts}"

    async def poll(self, name: str) -> Operation:
        return Operation(name=name, done=True, videos=[VideoRef(uri="http://x/v.mp4")])

    async def download(self, video: VideoRef) -> Any:
        yield b"video"


class Service:
    def __init__(self, actor: GenerationActor) -> None:
        self.actor = actor
        self.actors = {"veo3": actor}

    async def __call__(self, job: Job, report: Any) -> Any:
        return await self.actor(job, report)


def _job(attempts: int = 1) -> Job:
    return a_job(id="j", status="processing", attempts=attempts)


def _worker(tmp_path: Path, veo: FakeVeo, queues: FlakyQueues) -> Worker:
    worker = Worker(Config(data_dir=str(tmp_path), storage="s3", s3_bucket="b"))
    worker.board = MemoryBoard()  # type: ignore[assignment]
    worker.queues = queues  # type: ignore[assignment]
    actor = GenerationActor(
        ClientSpy(veo, worker),  # type: ignore[arg-type]
        LocalStore(tmp_path, "http://x"),
        polling_interval_s=0.001,
    )
    worker.service = Service(actor)  # type: ignore[assignment]
    return worker


def test_attempt_2_resumes_the_operation_attempt_1_put_on_the_board(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempt 1's Checkpoint event never got out (its lease ran out meanwhile): the
    coordinator sends attempt 2 with no checkpoint; the board still names the paid
    operation, and attempt 2 polls it instead of paying again."""
    monkeypatch.setattr(worker_mod, "SEND_TRIES", 1)
    veo = FakeVeo()
    queues = FlakyQueues(fail_checkpoints=-1)

    async def main() -> tuple[Any, Any]:
        worker = _worker(tmp_path, veo, queues)
        out1 = await attempt.generate(
            worker, WorkerRun(Work(job=_job(), attempt=1), "h1")
        )  # no lease
        queues.fail_checkpoints = 0
        out2 = await attempt.generate(worker, WorkerRun(Work(job=_job(2), attempt=2), "h2"))
        return out1, out2

    out1, out2 = asyncio.run(main())
    assert out1.error is not None and out1.error.code == "checkpoint_failed"
    assert out2.result is not None
    assert veo.starts == 1


def test_a_checkpoint_event_is_retried_while_the_lease_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_mod, "SEND_TRIES", 1)
    veo = FakeVeo()
    queues = FlakyQueues(fail_checkpoints=3)

    async def main() -> Any:
        worker = _worker(tmp_path, veo, queues)
        run = WorkerRun(Work(job=_job(), attempt=1), "h", lease_until=float("inf"))
        return await attempt.generate(worker, run)

    out = asyncio.run(main())
    assert out.result is not None, out.error
    assert veo.starts == 1
    names = [e.checkpoint.get("operation") for e in queues.sent if hasattr(e, "checkpoint")]
    assert "models/veo/operations/op-1" in names


def test_the_sigterm_grace_covers_a_start_with_a_token_refresh() -> None:
    assert start_grace_s(60.0) > 2 * 60.0


async def _start_then_stop(worker: Worker, veo: FakeVeo, stop: Any) -> WorkerRun:
    """A run whose paid start is in flight when `stop(run)` comes."""
    run = WorkerRun(Work(job=_job(), attempt=1), "h", lease_until=float("inf"))
    checkpointed = asyncio.Event()

    async def paid_attempt() -> None:
        RUN.set(run)
        name = await worker.service.actor.client.start("p", None)  # type: ignore[union-attr]
        await attempt.reporter(worker, run)(checkpoint={"operation": name})
        checkpointed.set()
        await asyncio.Event().wait()  # polls until stopped

    worker.runs["j"] = run
    run.task = asyncio.create_task(paid_attempt())
    while not veo.starts:  # the POST is out
        await asyncio.sleep(0.01)
    await stop(run)
    await asyncio.gather(run.task, return_exceptions=True)
    return run


def test_sigterm_waits_for_a_start_within_its_timeout(tmp_path: Path) -> None:
    veo = FakeVeo(start_s=1.0)  # answered within the 60 s request timeout
    queues = FlakyQueues(fail_checkpoints=0)

    async def main() -> tuple[Worker, WorkerRun]:
        worker = _worker(tmp_path, veo, queues)

        async def sigterm(run: WorkerRun) -> None:
            await worker._hand_back_all()

        return worker, await _start_then_stop(worker, veo, sigterm)

    worker, run = asyncio.run(main())
    assert worker.board.data["g"].checkpoint == {  # type: ignore[attr-defined]
        "operation": "models/veo/operations/op-1"
    }
    assert queues.handed_back == ["h"] and run.stop_reason == "handback"
    assert worker.service.actor.ambiguous_starts == 0  # type: ignore[union-attr]


def test_a_start_cut_by_sigterm_after_its_grace_is_counted_ambiguous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(starts_mod, "START_MARGIN_S", 0.0)
    veo = FakeVeo(start_s=5.0, request_timeout_s=0.05)  # (a start past its own timeout)
    queues = FlakyQueues(fail_checkpoints=0)

    async def main() -> Worker:
        worker = _worker(tmp_path, veo, queues)

        async def sigterm(run: WorkerRun) -> None:
            await worker._hand_back_all()

        await _start_then_stop(worker, veo, sigterm)
        return worker

    worker = asyncio.run(main())
    assert worker.service.actor.ambiguous_starts == 1  # type: ignore[union-attr]
    assert "g" not in worker.board.data  # type: ignore[attr-defined]


def test_a_lost_lease_stops_a_run_only_after_its_start_is_checkpointed(tmp_path: Path) -> None:
    veo = FakeVeo(start_s=0.3)
    queues = FlakyQueues(fail_checkpoints=0)

    async def main() -> tuple[Worker, WorkerRun]:
        worker = _worker(tmp_path, veo, queues)

        async def lease_lost(run: WorkerRun) -> None:
            run.stop("lease_lost")
            assert run.task is not None and not run.task.cancelled()

        return worker, await _start_then_stop(worker, veo, lease_lost)

    worker, run = asyncio.run(main())
    assert run.stop_reason == "lease_lost"
    assert worker.board.data["g"].checkpoint == {  # type: ignore[attr-defined]
        "operation": "models/veo/operations/op-1"
    }


class BusyVeo(FakeVeo):
    """Job "b"'s first start gets a 429 (not paid; retried after 1 s); operations never
    finish (the runs poll until they are stopped)."""

    def __init__(self) -> None:
        super().__init__(start_s=1.5, request_timeout_s=1.0)  # grace: 2 x 1 s
        self.limited = False

    async def start(self, prompt: str, params: Any, *, model: str | None = None) -> str:
        if prompt == "b" and not self.limited:
            self.limited = True
            raise ProviderError("rate limited", retryable=True, status=429, retry_after_s=1.0)
        return await super().start(prompt, params, model=model)

    async def poll(self, name: str) -> Operation:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def test_no_paid_start_begins_after_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run a's start is in flight at SIGTERM (it settles within the grace); run b, waiting
    out a 429, would start after SIGTERM and be cut at the grace's end (maybe paid, its
    operation lost: the next worker pays again). It is handed back unpaid instead."""
    monkeypatch.setattr(starts_mod, "START_MARGIN_S", 0.0)
    veo = BusyVeo()
    queues = FlakyQueues(fail_checkpoints=0)

    async def main() -> Worker:
        worker = _worker(tmp_path, veo, queues)
        for job_id in ("a", "b"):
            job = msgspec.structs.replace(_job(), id=job_id, generation_id=job_id, prompt=job_id)
            run = WorkerRun(Work(job=job, attempt=1), f"h-{job_id}", lease_until=float("inf"))
            worker.runs[job_id] = run
            run.task = asyncio.create_task(worker._execute(run))
        while not (veo.starts and veo.limited):
            await asyncio.sleep(0.01)
        await worker._hand_back_all()  # SIGTERM
        return worker

    worker = asyncio.run(main())
    assert veo.starts == 1  # a's; b never started
    assert worker.service.actor.ambiguous_starts == 0  # type: ignore[union-attr]
    assert sorted(worker.board.data) == ["a"]  # type: ignore[attr-defined]
    assert sorted(queues.handed_back) == ["h-a", "h-b"]  # both back in the queue
    assert not worker.runs
