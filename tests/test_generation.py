"""The GenerationActor as the JobQueue's processor, over real HTTP to the fake Veo server.

The fake Veo server runs on a loop thread of its own, so it outlives the queues (a restart
test stops one queue and its loop, then opens another on the same data folder). The actor,
its aiohttp session, its video store and the queue share a second loop thread: the worker.
Time is a ManualClock shared by the actor and the fake (an operation is done `latency_s`
after it starts, in that clock); `run_until` skips time forward to the next sleeper, like
a time-skipping test environment, and tests that check a delay look at the sleeper itself.
The queue keeps the real clock: its 900 s job watchdog never fires here.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
import pytest
from aiobotocore.session import AioSession
from helpers_jobs import a_job
from helpers_queue import WAIT_S, Watcher, poll_until

from genqueue import Config, Job, JobNotFound, JobQueue, JobResult, ProviderError
from genqueue.actors.bridge import LoopThread
from genqueue.actors.generation import GenerationActor
from genqueue.clock import ManualClock
from genqueue.policies import provider_retry
from genqueue.providers.fake_veo import SAFETY_REASON, FakeVeo, FakeVeoServer, iter_mp4
from genqueue.providers.veo3 import Veo3Client
from genqueue.storage.videos import MIN_PART_SIZE, LocalStore, S3Store, VideoStore

T = TypeVar("T")
KEY = "test-key-0c4e1b"
BASE_URL = "http://127.0.0.1:8787"
SIZE = 200_000  # the fake's video, small enough to compare whole
MiB = 1024 * 1024


# -- time ---------------------------------------------------------------------------------------


def wakes(clock: ManualClock) -> list[float]:
    """When the coroutines sleeping on `clock` wake (white-box: the clock's sleeper heap)."""
    with clock._lock:
        return sorted(at for at, _, _, fut in clock._sleepers if not fut.done())


def forget_sleepers(clock: ManualClock, loop: asyncio.AbstractEventLoop) -> None:
    """Drop the sleepers of a closed loop: ManualClock.set would call into that loop and raise
    "Event loop is closed" (a ManualClock bug, worked around here)."""
    with clock._lock:
        clock._sleepers = [s for s in clock._sleepers if s[2] is not loop]
        heapq.heapify(clock._sleepers)


def next_delay(clock: ManualClock) -> float:
    """Wait until something sleeps on `clock`; how long, from now, it sleeps."""
    poll_until(lambda: bool(wakes(clock)), "a sleeper on the clock")
    return wakes(clock)[0] - clock.now()


def run_until(clock: ManualClock, predicate: Callable[[], bool], what: str) -> None:
    """Skip time to each next sleeper until `predicate` holds (a real-time timeout guards)."""
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        pending = wakes(clock)
        if pending:
            clock.set(pending[0])
        else:
            time.sleep(0.001)  # an HTTP call or a store write is in flight


# -- the rig --------------------------------------------------------------------------------------


class Worker:
    """A loop thread with what the actor needs on it: an aiohttp session, a client, a store."""

    def __init__(self, base_url: str, store: VideoStore):
        self.thread = LoopThread("generation-worker")
        self.loop = self.thread.start()
        self.session: aiohttp.ClientSession = self.run(self._session())
        self.client = Veo3Client(self.session, base_url=base_url, api_key=KEY)
        self.store = store
        self.run(store.start())

    @staticmethod
    async def _session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = WAIT_S) -> T:
        result: T = self.thread.run(coro, timeout_s)
        return result

    def stop(self) -> None:
        """Like the process dying: every coroutine left on the loop is cancelled."""
        self.run(self.store.close())
        self.run(self.session.close())
        self.thread.stop()


class Rig:
    """The fake Veo (its own loop), a worker loop, and the queues opened on it."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.data_dir = tmp_path / "data"
        self.clock = ManualClock()
        self.server_thread = LoopThread("fake-veo")
        self.server_thread.start()
        self.server = FakeVeoServer(api_key=KEY, clock=self.clock, latency_s=30, video_size=SIZE)
        self.fake: FakeVeo = self.server_thread.run(self.server.__aenter__(), WAIT_S)
        self.worker: Worker | None = None
        self.queues: list[JobQueue] = []

    def start_worker(self, store: VideoStore | None = None) -> Worker:
        store = store or LocalStore(self.data_dir / "media", BASE_URL)
        self.worker = Worker(self.fake.base_url, store)
        return self.worker

    def actor(self, **settings: Any) -> GenerationActor:
        worker = self.worker or self.start_worker()
        settings = {
            "polling_interval_s": 10.0,
            "retry": provider_retry(2),
            "clock": self.clock,
        } | settings
        return GenerationActor(worker.client, worker.store, **settings)

    def queue(self, actor: GenerationActor, **settings: Any) -> tuple[JobQueue, Watcher]:
        assert self.worker is not None
        settings.setdefault("synchronous", "NORMAL")
        config = Config(data_dir=str(self.data_dir), **settings)
        queue = JobQueue(config, actor, loop=self.worker.loop)
        watcher = Watcher(queue)  # subscribed before open: sees a recovered job's events
        self.queues.append(queue)
        queue.open()
        return queue, watcher

    def stop_worker(self) -> None:
        """Close the queues, then stop the worker loop (the processor's task dies with it)."""
        while self.queues:
            self.queues.pop().close()
        if self.worker is not None:
            loop = self.worker.loop
            self.worker.stop()
            self.worker = None
            forget_sleepers(self.clock, loop)

    def close(self) -> None:
        try:
            self.stop_worker()
        finally:
            self.server_thread.run(self.server.__aexit__(None, None, None), WAIT_S)
            self.server_thread.stop()

    def start_requests(self) -> int:
        return sum(1 for r in self.fake.requests if r.path_qs.endswith(":predictLongRunning"))

    def poll_requests(self) -> int:
        return sum(1 for r in self.fake.requests if "/operations/" in r.path_qs)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def finish(rig: Rig, watcher: Watcher, job_id: str) -> Job:
    """Skip time until the job is terminal; the job as last stored."""

    def done() -> bool:
        with watcher.cv:
            job = watcher.latest.get(job_id)
            return job is not None and job.terminal

    run_until(rig.clock, done, f"job {job_id} to finish")
    with watcher.cv:
        return watcher.latest[job_id]


def checkpointed(watcher: Watcher, job_id: str) -> str | None:
    with watcher.cv:
        job = watcher.latest.get(job_id)
    ckpt = job.checkpoint if job is not None else None
    return ckpt.get("operation") if isinstance(ckpt, dict) else None


async def read_all(store: VideoStore, key: str) -> bytes:
    return b"".join([block async for block in store.open_read(key)])


def served(size: int) -> bytes:
    return b"".join(iter_mp4(size))


# -- through the queue ----------------------------------------------------------------------------


def direct_job(rig: Rig, job_id: str, user_id: str, prompt: str) -> Job:
    """A job record for calling the actor without a queue."""
    now = rig.clock.now()
    return a_job(
        id=job_id,
        generation_id=job_id,
        user_id=user_id,
        prompt=prompt,
        created_at=now,
        updated_at=now,
    )


def test_success_stores_the_served_video(rig: Rig) -> None:
    q, w = rig.queue(rig.actor())
    job, _ = q.submit({"prompt": "a red fox in the snow"}, user_id="u1")
    done = finish(rig, w, job.id)
    assert done.status == "completed", done.error
    assert done.result is not None
    name = done.checkpoint["video_name"]  # a random token, kept before the upload
    assert len(name) == 32 and job.id not in name
    key = f"videos/u1/{name}.mp4"
    assert done.result.video_key == key and done.result.private  # local: signed URLs only
    # stored unsigned; what a reader (here a subscriber) gets is signed afresh
    assert done.result.video_url.startswith(f"{BASE_URL}/{key}?expires=")
    assert done.result.duration == 8.0
    assert done.progress == 100 and done.attempts == 1
    assert (rig.data_dir / "media" / key).read_bytes() == served(SIZE)
    assert rig.worker is not None
    assert rig.worker.run(read_all(rig.worker.store, key)) == served(SIZE)
    op = checkpointed(w, job.id)
    assert op is not None and op in rig.fake.operations
    # latency 30 s, a poll every 10 s from the start: polls at 10, 20 and 30 s; one paid start
    assert (rig.fake.starts, rig.fake.operations[op].polls, rig.fake.downloads) == (1, 3, 1)
    # the plan's API metrics, as /api/queue/status shows them under "provider"
    stats = q.status().provider
    assert (stats["starts"], stats["polls"], stats["downloads"]) == (1, 3, 1)
    assert stats["calls"] == 5 and stats["errors"] == 0 and stats["rateLimited"] == 0
    assert stats["callsPerMinute"] == 5  # all within the last 30 s
    rig.clock.advance(61)
    assert q.status().provider["callsPerMinute"] == 0


def test_429_on_start_waits_for_retry_after(rig: Rig) -> None:
    rig.fake.latency_s = 0
    rig.fake.fail_starts(429, retry_after_s=7)
    q, w = rig.queue(rig.actor())
    job, _ = q.submit({"prompt": "a busy day"})
    assert next_delay(rig.clock) == 7  # Retry-After, not the default 1 s backoff
    t0 = rig.clock.now()
    assert (rig.start_requests(), rig.fake.starts) == (1, 0)
    rig.clock.advance(6.9)
    assert wakes(rig.clock) == [t0 + 7]  # still waiting: no second start yet
    assert rig.start_requests() == 1
    rig.clock.advance(0.1)
    done = finish(rig, w, job.id)
    assert done.status == "completed", done.error
    assert (rig.start_requests(), rig.fake.starts) == (2, 1)
    assert rig.fake.start_times == [t0 + 7]
    stats = q.status().provider
    assert (stats["rateLimited"], stats["errors"], stats["starts"]) == (1, 1, 2)


def test_5xx_on_poll_then_success(rig: Rig) -> None:
    rig.fake.latency_s = 0
    rig.fake.fail_polls(503, count=1)
    rig.fake.fail_polls(500, count=1, html=True)  # a proxy's HTML page, not Google's JSON
    q, w = rig.queue(rig.actor())
    job, _ = q.submit({"prompt": "a flaky network"})
    assert next_delay(rig.clock) == 10  # the first poll, one interval after the start
    rig.clock.advance(10)
    poll_until(lambda: rig.poll_requests() == 1, "the first poll")
    assert next_delay(rig.clock) == 1  # it failed: backoff 1 s, then 2 s
    rig.clock.advance(1)
    poll_until(lambda: rig.poll_requests() == 2, "the second poll")
    assert next_delay(rig.clock) == 2
    done = finish(rig, w, job.id)
    assert done.status == "completed", done.error
    assert (rig.fake.starts, rig.poll_requests(), rig.fake.downloads) == (1, 3, 1)
    assert done.attempts == 1


def test_safety_block_fails_with_the_reason_and_no_retry(rig: Rig) -> None:
    q, w = rig.queue(rig.actor(), max_attempts=3)
    job, _ = q.submit({"prompt": "something nasty [unsafe]"})
    done = finish(rig, w, job.id)
    assert done.status == "failed"
    assert done.error is not None and SAFETY_REASON in done.error
    assert "safety" in done.error
    assert (rig.fake.starts, rig.fake.downloads, done.attempts) == (1, 0, 1)


def test_operation_error_13_is_retried_up_to_max_retries(rig: Rig) -> None:
    q, w = rig.queue(rig.actor(retry=provider_retry(2)), max_attempts=3)
    job, _ = q.submit({"prompt": "an unlucky one [op-error:13]"})
    done = finish(rig, w, job.id)
    assert done.status == "failed"
    assert done.error is not None and "gRPC code 13" in done.error
    assert rig.fake.starts == 3  # the first start and max_retries more, then no more
    assert done.attempts == 1  # the queue does not retry a job whose retries are spent
    assert all(op.polls >= 1 for op in rig.fake.operations.values())


def test_operation_error_3_fails_at_once(rig: Rig) -> None:
    q, w = rig.queue(rig.actor(retry=provider_retry(2)), max_attempts=3)
    job, _ = q.submit({"prompt": "a bad argument [op-error:3]"})
    done = finish(rig, w, job.id)
    assert done.status == "failed"
    assert done.error is not None and "gRPC code 3" in done.error
    assert (rig.fake.starts, done.attempts) == (1, 1)


def test_bad_request_fails_at_once_with_googles_message(rig: Rig) -> None:
    q, w = rig.queue(rig.actor(), max_attempts=3)
    job, _ = q.submit({"prompt": "a refused one [bad-request]"})
    done = finish(rig, w, job.id)
    assert done.status == "failed"
    assert done.error is not None and "Request contains an invalid argument." in done.error
    assert (rig.start_requests(), rig.fake.starts, done.attempts) == (1, 0, 1)


def test_timeout_fails_with_a_clear_message(rig: Rig) -> None:
    rig.fake.latency_s = 1000
    q, w = rig.queue(rig.actor(operation_timeout_s=25), max_attempts=3)
    job, _ = q.submit({"prompt": "a very long one"})
    done = finish(rig, w, job.id)
    assert done.status == "failed"
    assert done.error == "Veo did not finish within 25 s"
    assert (rig.fake.starts, rig.fake.downloads, done.attempts) == (1, 0, 1)
    assert rig.poll_requests() == 3  # at 10, 20 and 30 s: 30 s is past the 25 s limit


def test_cancel_during_polling_stops_polling(rig: Rig) -> None:
    rig.fake.latency_s = 1000
    q, w = rig.queue(rig.actor())
    job, _ = q.submit({"prompt": "never mind"})
    poll_until(lambda: checkpointed(w, job.id) is not None, "the operation checkpoint")
    assert next_delay(rig.clock) == 10.0  # a fresh operation: first polled one interval on
    rig.clock.advance(10)
    poll_until(lambda: rig.poll_requests() == 1 and bool(wakes(rig.clock)), "polling")
    q.cancel(job.id, "user changed their mind")
    done = w.wait_status(job.id, "cancelled")
    assert done.error == "user changed their mind"
    poll_until(lambda: not wakes(rig.clock), "the polling coroutine to end")
    rig.clock.advance(100)  # ten poll intervals: nobody is left to poll
    assert rig.worker is not None
    rig.worker.run(asyncio.sleep(0))
    assert rig.poll_requests() == 1
    assert (rig.fake.starts, rig.fake.downloads) == (1, 0)
    assert q.get(job.id).status == "cancelled"


def test_restart_during_polling_resumes_the_same_operation(rig: Rig) -> None:
    q1, w1 = rig.queue(rig.actor())
    job, _ = q1.submit({"prompt": "a sunrise over the sea"}, user_id="u2")
    poll_until(lambda: checkpointed(w1, job.id) is not None, "the operation checkpoint")
    op = checkpointed(w1, job.id)
    assert op is not None
    rig.clock.advance(next_delay(rig.clock))  # started, checkpointed: the first poll
    poll_until(lambda: rig.poll_requests() == 1 and bool(wakes(rig.clock)), "polling")
    rig.stop_worker()  # the process stops: queue closed, the loop and its coroutine gone
    assert rig.fake.operations[op].polls == 1
    rig.clock.advance(15)  # time passes while nothing runs

    rig.start_worker()  # a new process: new loop, session, client, store and actor
    _q2, w2 = rig.queue(rig.actor())
    done = finish(rig, w2, job.id)
    assert done.status == "completed", done.error
    assert rig.fake.starts == 1  # the same operation, not a second paid video
    assert list(rig.fake.operations) == [op]
    assert rig.fake.operations[op].polls >= 2 and rig.fake.downloads == 1
    assert done.checkpoint["operation"] == op
    assert done.result is not None and done.result.video_key is not None
    key = done.result.video_key
    assert key == f"videos/u2/{done.checkpoint['video_name']}.mp4"
    assert (rig.data_dir / "media" / key).read_bytes() == served(SIZE)


# -- S3 (moto's server in a child process) --------------------------------------------------------

ACCESS_KEY_ID = "AKIDTESTINGONLY"
SECRET_ACCESS_KEY = "not-a-real-secret-9d1e"


def s3_client(endpoint: str) -> Any:
    return AioSession().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )


async def sha256_of(chunks: AsyncIterator[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    async for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def test_large_video_streams_to_s3_in_flat_memory(rig: Rig, moto_endpoint: str) -> None:
    total = 64 * MiB
    expected = hashlib.sha256()
    for chunk in iter_mp4(total):
        expected.update(chunk)
    bucket = f"videos-{uuid.uuid4().hex[:12]}"
    store = S3Store(
        bucket=bucket,
        endpoint_url=moto_endpoint,
        region="us-east-1",
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        part_size=MIN_PART_SIZE,
    )
    worker = rig.start_worker(store)
    rig.fake.latency_s = 0
    rig.fake.video_size = total
    actor = rig.actor(polling_interval_s=0)  # the clock stands still: poll at once
    job = direct_job(rig, "big-1", "u3", "a long, detailed video")
    reports: list[dict[str, Any]] = []

    async def report(progress: int | None = None, checkpoint: Any = None) -> None:
        reports.append({"progress": progress, "checkpoint": checkpoint})

    async def scenario() -> tuple[JobResult, int]:
        async with s3_client(moto_endpoint) as admin:
            await admin.create_bucket(Bucket=bucket)
        tracemalloc.start()
        try:
            result = await actor(job, report)
            return result, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    result, peak = worker.run(scenario(), timeout_s=60)
    assert peak < 3 * MIN_PART_SIZE, f"peak {peak / MiB:.1f} MiB for a {total // MiB} MiB video"
    assert rig.fake.starts == 1 and rig.fake.downloads == 1
    assert reports[0]["checkpoint"]["operation"] in rig.fake.operations

    key = result.video_key
    assert key is not None and key.startswith("videos/u3/") and "big-1" not in key
    assert not result.private  # S3 gives its own (presigned) URL

    async def check() -> tuple[tuple[str, int], tuple[str, int], dict[str, Any]]:
        stored = await sha256_of(store.open_read(key))
        async with aiohttp.ClientSession() as session, session.get(result.video_url) as resp:
            assert resp.status == 200
            downloaded = await sha256_of(resp.content.iter_chunked(1 << 20))
        async with s3_client(moto_endpoint) as admin:
            head = await admin.head_object(Bucket=bucket, Key=key)
        return stored, downloaded, head

    stored, downloaded, head = worker.run(check(), timeout_s=60)
    assert stored == downloaded == (expected.hexdigest(), total)
    assert head["ContentType"] == "video/mp4"
    assert head["ETag"].strip('"').endswith("-13")  # it went up in 5 MiB parts


def test_actor_raises_provider_errors_when_called_directly(rig: Rig) -> None:
    """Without a queue: the error the JobActor sees, and no report after the failure."""
    actor = rig.actor()
    assert rig.worker is not None
    job = direct_job(rig, "direct-1", "u4", "[bad-request]")
    reports: list[Any] = []

    async def report(progress: int | None = None, checkpoint: Any = None) -> None:
        reports.append((progress, checkpoint))

    with pytest.raises(ProviderError) as caught:
        rig.worker.run(actor(job, report))
    assert caught.value.retryable is False and caught.value.status == 400
    assert reports == [] and actor.calls["start"] == 1


def test_retention_deletes_the_video_with_the_job(rig: Rig) -> None:
    """The job's video goes when retention removes the job, and so does a video stored by
    an older version under the job's id (its result has no `video_key`)."""
    worker = rig.start_worker()
    actor = rig.actor()
    config = Config(
        data_dir=str(rig.data_dir), synchronous="NORMAL", retention_days=1, retention_interval_s=60
    )
    queue = JobQueue(config, actor, loop=worker.loop, clock=rig.clock)
    watcher = Watcher(queue)
    rig.queues.append(queue)
    queue.open()
    job, _ = queue.submit({"prompt": "a red fox in the snow"}, user_id="u1")
    done = finish(rig, watcher, job.id)
    assert done.result is not None and done.result.video_key is not None
    video = rig.data_dir / "media" / done.result.video_key
    assert video.read_bytes() == served(SIZE)
    legacy = rig.data_dir / "media" / "videos" / "u1" / "old-1.mp4"
    legacy.write_bytes(b"an older version's video")
    old = msgspec.structs.replace(
        direct_job(rig, "old-1", "u1", "old"),
        status="completed",
        result=JobResult(video_url=f"{BASE_URL}/videos/u1/old-1.mp4"),
    )
    worker.run(actor.delete_videos([old]))  # what retention asks for such a record
    assert not legacy.exists()
    poll_until(lambda: queue.status().completed == 1, "the queue to count the job's end")
    rig.clock.advance(2 * 86400)  # the next retention pass removes the finished job
    poll_until(lambda: not video.exists(), "retention to delete the video")
    with pytest.raises(JobNotFound):
        queue.get(job.id)
