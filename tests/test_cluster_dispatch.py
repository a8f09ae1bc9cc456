"""The coordinator's dispatch: one work message per dispatch of a job, never two.

A job back from a daily-quota pause runs the same attempt number again (the JobActor gives
the attempt back): that is a new dispatch, sent again under a new deduplication id. A
coordinator that died between the send and its record resends the same dispatch under the
same deduplication id, which SQS drops.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from helpers_jobs import a_job
from helpers_queue import Watcher, poll_until, queue_factory, request

from genqueue import ProviderError
from genqueue.clock import ManualClock
from genqueue.cluster.coordinator import Coordinator
from genqueue.cluster.messages import decode_work
from genqueue.config import Config
from genqueue.models import Job


class StubQueues:
    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []  # (attempt, deduplication id)

    async def send(self, queue: str, body: str, group: str, dedup: str | None = None) -> None:
        self.sent.append((decode_work(body).attempt, dedup or ""))


def test_a_job_back_from_a_quota_pause_is_sent_to_the_workers_again(tmp_path: Path) -> None:
    clock = ManualClock()
    co = Coordinator(Config(data_dir=str(tmp_path / "x")), clock=clock)
    queues = StubQueues()
    co.queues = queues  # type: ignore[assignment]
    with queue_factory(tmp_path) as factory:
        q = factory.open(co, clock=clock, dispatch="sqs", max_attempts=3)
        w = Watcher(q)
        q.submit(request(id="a"))
        poll_until(lambda: "a" in co.runs and len(queues.sent) == 1, "attempt 1 sent")
        quota = ProviderError(
            "daily quota", retryable=True, status=429, retry_after_s=3600, code="quota_exhausted"
        )
        run: Any = co.runs["a"]
        loop = run.future.get_loop()  # the worker's outcome, set on the loop that awaits it
        loop.call_soon_threadsafe(run.future.set_exception, quota)
        w.wait_status("a", "retry_wait")
        clock.advance(3600)  # the pause is over: dispatched again, as attempt 1 again
        poll_until(lambda: len(queues.sent) >= 2, "the work message sent again")
        assert [a for a, _ in queues.sent] == [1, 1]
        assert queues.sent[0][1] != queues.sent[1][1]  # SQS would drop a reused id
        assert q.get("a").status == "processing"
        co.closing = True  # the queue closing stops the run: no cancel to pass on


def _job(checkpoint: Any = None) -> Job:
    return a_job(status="processing", attempts=1, started_at=1234.5, checkpoint=checkpoint)


def _dispatch(tmp_path: Path, job: Job) -> tuple[list[tuple[int, str]], list[Any]]:
    """One Coordinator (a fresh process) runs `job` until its work is sent and recorded."""
    co = Coordinator(Config(data_dir=str(tmp_path)))
    queues = StubQueues()
    co.queues = queues  # type: ignore[assignment]
    saved: list[Any] = []
    recorded = asyncio.Event()

    async def report(progress: Any = None, checkpoint: Any = None) -> None:
        saved.append(checkpoint)
        recorded.set()

    async def main() -> None:
        task = asyncio.create_task(co(job, report))
        await asyncio.wait_for(recorded.wait(), 10)
        co.closing = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    return queues.sent, saved


def test_a_restart_resends_one_dispatch_under_the_same_id_and_not_after_its_record(
    tmp_path: Path,
) -> None:
    first, saved = _dispatch(tmp_path, _job())
    # died before the record: the same dispatch again, the same deduplication id
    again, _ = _dispatch(tmp_path, _job())
    assert len(first) == 1 and again == first
    # died after the record: nothing sent
    co = Coordinator(Config(data_dir=str(tmp_path)))
    queues = StubQueues()
    co.queues = queues  # type: ignore[assignment]

    async def main() -> None:
        async def report(**kw: Any) -> None:
            return None

        task = asyncio.create_task(co(_job(saved[0]), report))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        co.closing = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert queues.sent == []
