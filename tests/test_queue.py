"""The job queue through its embeddable API: order, caps, rate limits, dispatch modes,
retention, idempotency, cancellation, retries, recovery and the state machine.

Time-dependent behaviour runs on a ManualClock that the test advances; tests wait on
processor calls and job events (see helpers_queue.py), never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import weakref
from collections.abc import Coroutine, Iterator
from pathlib import Path

import msgspec
import pytest
from helpers_queue import (
    QueueFactory,
    Recorder,
    Watcher,
    poll_until,
    queue_alarm_at,
    queue_factory,
    removed,
    request,
)

from genqueue import (
    IllegalTransition,
    InvalidRequest,
    JobNotFound,
    JobQueue,
    JobResult,
    ProviderError,
    Submission,
)
from genqueue.actors.job import JobActor
from genqueue.actors.messages import Report as ReportMsg
from genqueue.actors.messages import Submit, SubmitMany
from genqueue.actors.queue_records import Pending
from genqueue.actors.runtime import AlarmRecord
from genqueue.clock import ManualClock
from genqueue.models import (
    GenerationParams,
    GenerationRequest,
    ImageInput,
    Job,
    Route,
    VideoOutput,
)
from genqueue.processor import Report


@pytest.fixture
def queues(tmp_path: Path) -> Iterator[QueueFactory]:
    with queue_factory(tmp_path) as factory:
        yield factory


def job_alarm_at(q: JobQueue, job_id: str) -> float | None:
    assert q.system is not None
    rec = q.system.alarms.get(f"job/{job_id}", AlarmRecord)
    return None if rec is None else rec.at


def retryable(message: str = "provider unavailable") -> ProviderError:
    return ProviderError(message, retryable=True, status=503)


# -- order ----------------------------------------------------------------------------------


def test_fifo_within_a_priority_and_priority_across_them_over_1000_jobs(queues):
    rng = random.Random(1234)
    rec = Recorder()
    rec.script["blocker"] = ["hold"]
    q = queues.open(rec, max_concurrency=1)
    q.submit(request(id="blocker", priority=10))
    rec.wait_running("blocker")  # everything below queues up behind it

    priorities = [rng.randint(0, 10) for _ in range(1000)]
    ids = [f"job-{i:04d}" for i in range(1000)]
    for job_id, priority in zip(ids, priorities, strict=True):
        job, _ = q.submit(request(id=job_id, priority=priority))
        assert job.status == "queued"
    st = q.status()
    assert st.queued == 1000
    assert sum(st.queued_by_priority.values()) == 1000

    rec.release("blocker")
    q.join(timeout_s=60)

    expected = sorted(range(1000), key=lambda i: (-priorities[i], i))
    assert rec.order() == ["blocker"] + [ids[i] for i in expected]
    assert rec.max_running == 1
    assert q.status().completed == 1001


def test_queued_jobs_keep_their_order_across_a_restart(queues):
    rec = Recorder()
    rec.script["blocker"] = ["hold"]
    q = queues.open(rec, max_concurrency=1)
    q.submit(request(id="blocker"))
    rec.wait_running("blocker")
    order = ["p5-a", "p0-a", "p5-b", "p9-a", "p0-b"]
    for job_id in order:
        q.submit(request(id=job_id, priority=int(job_id[1])))
    queues.close(q)

    rec2 = Recorder()
    q2 = queues.open(rec2, max_concurrency=1)
    q2.join(timeout_s=20)
    # the job that was processing is resumed first (it holds the only slot), then by priority
    assert rec2.order() == ["blocker", "p9-a", "p5-a", "p5-b", "p0-a", "p0-b"]


# -- rate limit and 429 -----------------------------------------------------------------------


def test_rate_limit_holds_over_a_manual_clock_minute(queues):
    clock = ManualClock()
    t0 = clock.now()
    rec = Recorder(clock)
    q = queues.open(rec, clock=clock, rate_limit_per_minute=5, max_concurrency=50)
    ids = [q.submit(request(prompt=f"job {i}")).job.id for i in range(12)]

    rec.wait_calls(5)
    poll_until(lambda: q.status().completed == 5, "the first five to complete")
    poll_until(lambda: queue_alarm_at(q) == t0 + 60, "the queue to wait for the next token")
    assert [c.at for c in rec.calls] == [t0] * 5
    assert q.status().queued == 7

    clock.advance(30)  # tokens come back 60 s after they were spent, not before
    poll_until(lambda: queue_alarm_at(q) == t0 + 60, "the queue to wait again")
    assert len(rec.calls) == 5

    clock.advance(30)
    rec.wait_calls(10)
    poll_until(lambda: queue_alarm_at(q) == t0 + 120, "the queue to wait for the third minute")
    clock.advance(60)
    rec.wait_calls(12)
    q.join(timeout_s=20)

    times = [c.at for c in rec.calls]
    assert times == [t0] * 5 + [t0 + 60] * 5 + [t0 + 120] * 2
    for t in times:  # a sliding window: never more than 5 starts in any 60 s
        assert sum(1 for u in times if t <= u < t + 60) <= 5
    assert sorted(c.job_id for c in rec.calls) == sorted(ids)


def test_the_rate_window_survives_a_restart(queues):
    """Tokens spent before a restart still count after it (they are stored with the
    queue's meta): a restarted queue does not start a fresh minute's worth at once."""
    clock = ManualClock()
    t0 = clock.now()
    rec = Recorder(clock)
    q = queues.open(rec, clock=clock, rate_limit_per_minute=3)
    for i in range(3):
        q.submit(request(prompt=f"before {i}"))
    q.join(timeout_s=20)
    queues.close(q)

    clock.advance(20)
    rec2 = Recorder(clock)
    q2 = queues.open(rec2, clock=clock, rate_limit_per_minute=3)
    q2.submit(request(prompt="after"))
    poll_until(lambda: queue_alarm_at(q2) == t0 + 60, "the queue to wait for a token")
    assert rec2.calls == []
    clock.advance(40)
    rec2.wait_calls(1)
    assert rec2.calls[0].at == t0 + 60


def test_a_429_pauses_dispatch_for_every_job_until_retry_after(queues):
    clock = ManualClock()
    t0 = clock.now()
    rec = Recorder(clock)
    rec.script["a"] = [
        ProviderError("too many requests", retryable=True, status=429, retry_after_s=30)
    ]
    w = None
    q = queues.open(rec, clock=clock, max_concurrency=4, retry_backoff_s=2)
    w = Watcher(q)
    q.submit(request(id="a"))
    w.wait_status("a", "retry_wait")
    poll_until(lambda: q.status().paused_until == t0 + 30, "dispatch to pause")

    q.submit(request(id="b"))
    q.submit(request(id="c", priority=10))
    poll_until(lambda: queue_alarm_at(q) == t0 + 30, "the queue to wait out the pause")
    assert rec.order() == ["a"]

    clock.advance(10)  # a's own backoff (2 s) is over, but dispatch is still paused
    w.wait_status("a", "queued")
    poll_until(lambda: q.status().queued == 3, "a to be requeued")
    poll_until(lambda: queue_alarm_at(q) == t0 + 30, "the queue to stay paused")
    assert rec.order() == ["a"]

    clock.advance(20)
    rec.wait_calls(4)
    q.join(timeout_s=20)
    assert [c.at for c in rec.calls[1:]] == [t0 + 30] * 3
    assert sorted(rec.order()[1:]) == ["a", "b", "c"]
    st = q.status()
    assert (st.completed, st.retried, st.rate_limit_hits, st.paused_until) == (3, 1, 1, None)


def test_a_daily_quota_pauses_dispatch_long_and_spends_no_attempt(queues):
    """Veo's per-day quota (issue 11): dispatch pauses for the quota pause, visible in the
    status, and the job waits it out with its attempts as they were."""
    clock = ManualClock()
    t0 = clock.now()
    rec = Recorder(clock)
    quota = ProviderError(
        "daily quota", retryable=True, status=429, retry_after_s=3600, code="quota_exhausted"
    )
    rec.script["a"] = [quota, quota]
    q = queues.open(rec, clock=clock, max_concurrency=4, max_attempts=2)
    w = Watcher(q)
    q.submit(request(id="a"))
    w.wait_status("a", "retry_wait")
    poll_until(lambda: q.status().paused_until == t0 + 3600, "dispatch to pause an hour")
    assert (q.status().paused_reason, q.status().quota_pauses) == ("quota", 1)
    assert q.get("a").attempts == 0
    q.submit(request(id="b"))
    poll_until(lambda: queue_alarm_at(q) == t0 + 3600, "the queue to wait out the pause")
    clock.advance(3600)  # the quota is still out: a pauses again, still no attempt spent
    poll_until(lambda: q.status().paused_until == t0 + 7200, "a second pause")
    assert q.get("a").attempts == 0 and q.get("a").status == "retry_wait"
    clock.advance(3600)
    q.join(timeout_s=20)
    assert q.get("a").status == "completed" and q.get("b").status == "completed"
    assert q.get("a").attempts == 1  # max_attempts=2, yet three calls: the quota cost none
    assert [c.job_id for c in rec.calls].count("a") == 3


def test_a_429_again_right_after_its_pause_is_taken_for_the_daily_quota(queues):
    """A per-minute limit lifts within its pause; one that is back as soon as the pause
    ends, with nothing completed between, is a quota that will not lift in a minute."""
    clock = ManualClock()
    t0 = clock.now()
    rec = Recorder(clock)
    limited = ProviderError("too many", retryable=True, status=429, retry_after_s=30)
    rec.script["a"] = [limited, limited]
    q = queues.open(rec, clock=clock, max_concurrency=1, retry_backoff_s=2, max_attempts=5)
    w = Watcher(q)
    q.submit(request(id="a"))
    poll_until(lambda: q.status().paused_until == t0 + 30, "a per-minute pause")
    assert q.status().paused_reason == "rate_limit"
    w.wait_status("a", "retry_wait")
    clock.advance(30)
    rec.wait_calls(2)
    poll_until(lambda: q.status().paused_until == t0 + 30 + 3600, "the quota pause")
    st = q.status()
    assert (st.paused_reason, st.quota_pauses, st.rate_limit_hits) == ("quota", 1, 1)
    clock.advance(3600)
    q.join(timeout_s=20)
    assert q.get("a").status == "completed" and q.status().paused_reason is None


def test_a_429_long_after_the_last_pause_is_a_plain_rate_limit(queues):
    """Jobs started fine after a per-minute pause but none completed yet (Veo takes
    minutes): another ordinary 429 ten minutes later pauses for its Retry-After, not the
    quota pause (the reviewer's finding 8)."""
    clock = ManualClock()
    t0 = clock.now()
    rec = Recorder(clock)
    limited = ProviderError("too many", retryable=True, status=429, retry_after_s=30)
    rec.script["a"] = [limited, "hold"]
    rec.script["b"] = ["hold"]
    rec.script["c"] = [limited]
    q = queues.open(rec, clock=clock, max_concurrency=4, retry_backoff_s=2, max_attempts=5)
    q.submit(request(id="a"))
    poll_until(lambda: q.status().paused_until == t0 + 30, "a per-minute pause")
    q.submit(request(id="b"))
    clock.advance(30)
    rec.wait_running("b")
    clock.advance(600)
    q.submit(request(id="c"))
    rec.wait_calls(4)
    poll_until(lambda: q.status().paused_until == t0 + 660, "c's per-minute pause")
    st = q.status()
    assert (st.paused_reason, st.quota_pauses, st.rate_limit_hits) == ("rate_limit", 0, 2)
    rec.release_all()


def test_a_start_accepted_after_a_pause_means_the_next_429_is_not_the_quota(queues):
    """A 429 right after a pause ends is the quota only when no start was accepted since:
    a job dispatched after the pause that checkpoints (its start was accepted) clears it."""
    clock = ManualClock()
    t0 = clock.now()
    rec = Recorder(clock)
    rec.checkpoint = {"operation": "op-1"}  # reported before holding: a start accepted
    limited = ProviderError("too many", retryable=True, status=429, retry_after_s=30)
    rec.script["a"] = [limited, "hold"]
    rec.script["b"] = ["hold"]
    rec.script["c"] = [limited]
    q = queues.open(rec, clock=clock, max_concurrency=4, retry_backoff_s=2, max_attempts=5)
    q.submit(request(id="a"))
    poll_until(lambda: q.status().paused_until == t0 + 30, "a per-minute pause")
    q.submit(request(id="b"))
    clock.advance(30)
    rec.wait_running("b")
    poll_until(lambda: q.get("b").checkpoint is not None, "b's checkpoint")
    clock.advance(5)  # within one pause length (30 s) of the pause's end
    q.submit(request(id="c"))
    poll_until(lambda: q.status().paused_until == t0 + 65, "c's per-minute pause")
    assert (q.status().paused_reason, q.status().quota_pauses) == ("rate_limit", 0)
    rec.release_all()


def test_a_checkpoint_without_progress_says_nothing_of_the_provider(queues):
    """A checkpoint stored with no progress (what sqs mode's coordinator saves at dispatch,
    before any worker called Veo) does not count as an accepted start: a 429 right after
    the pause is still taken for the quota."""
    clock = ManualClock()
    t0 = clock.now()
    rec = Recorder(clock)
    limited = ProviderError("too many", retryable=True, status=429, retry_after_s=30)
    rec.script["a"] = [limited, "hold"]
    rec.script["b"] = ["hold"]
    rec.script["c"] = [limited]

    async def bookkeeping_first(job, report):
        if job.id == "b":
            await report(checkpoint={"attempt": 1, "work": None})
        return await rec(job, report)

    q = queues.open(
        bookkeeping_first, clock=clock, max_concurrency=4, retry_backoff_s=2, max_attempts=5
    )
    q.submit(request(id="a"))
    poll_until(lambda: q.status().paused_until == t0 + 30, "a per-minute pause")
    q.submit(request(id="b"))
    clock.advance(30)
    rec.wait_running("b")
    poll_until(lambda: q.get("b").checkpoint is not None, "b's checkpoint")
    clock.advance(5)
    q.submit(request(id="c"))
    poll_until(lambda: q.status().paused_until == t0 + 35 + 3600, "the quota pause")
    assert (q.status().paused_reason, q.status().quota_pauses) == ("quota", 1)
    rec.release_all()


# -- dispatch modes -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["alarm", "immediate", "cron"])
def test_each_dispatch_mode_processes_the_same_100_jobs(queues, mode):
    clock = ManualClock()
    t0 = clock.now()
    rec = Recorder(clock)
    q = queues.open(rec, clock=clock, dispatch=mode, max_concurrency=10, cron_interval_s=10)
    ids = [q.submit(request(id=f"job-{i:03d}", priority=i % 3)).job.id for i in range(100)]

    if mode == "cron":
        assert rec.calls == []  # nothing starts before the first pass
        passes = 0
        while len(rec.calls) < 100:
            before = len(rec.calls)
            clock.advance(10)
            passes += 1
            rec.wait_calls(before + 10)  # one pass starts up to max_concurrency jobs
            poll_until(lambda: q.status().in_flight == 0, "the pass's jobs to finish")
            assert len(rec.calls) == before + 10
        assert passes == 10
        assert {c.at for c in rec.calls} == {t0 + 10 * k for k in range(1, 11)}
    q.join(timeout_s=30)

    assert sorted(rec.order()) == ids  # each job processed exactly once
    assert all(q.get(i).status == "completed" for i in ids)
    st = q.status()
    assert (st.submitted, st.completed, st.queued, st.in_flight) == (100, 100, 0, 0)


def test_immediate_mode_starts_on_submit_without_a_cap(queues):
    rec = Recorder(hold_all=True)
    q = queues.open(rec, dispatch="immediate", max_concurrency=1)
    ids = [q.submit(request()).job.id for _ in range(3)]
    rec.wait_running(*ids)
    rec.release(*ids)
    q.join(timeout_s=20)
    assert rec.max_running == 3


@pytest.mark.parametrize("mode", ["alarm", "immediate"])
def test_a_job_dispatched_in_its_submitting_turn_starts_after_that_one_commit(queues, mode):
    """The queue stores a job it dispatches as it is submitted as processing in the same
    turn, so the processor (the provider's start call) waits for one commit, not two."""
    seen: list[tuple[int, str, int]] = []

    async def processor(job, report):
        assert q.store is not None
        seen.append((q.store.commits, job.status, job.attempts))
        return JobResult(video_url="memory://x")

    q = queues.open(processor, dispatch=mode)
    assert q.store is not None
    q.submit(request())  # the queue is active and idle once this one has ended
    q.join(timeout_s=20)
    q.store.flush()
    before = q.store.commits
    job = q.submit(request()).job
    q.join(timeout_s=20)
    assert seen[1:] == [(before + 1, "processing", 1)]
    assert q.get(job.id).status == "completed"
    assert q.get(job.id).attempts == 1


def test_a_processor_whose_call_raises_fails_only_its_own_job(queues):
    """The queue's turn starts the jobs it creates started: a processor that raises when it is
    called, before any coroutine (a plain function by mistake), fails that job alone, and
    the other submissions of the same turn are stored and run (review finding)."""

    async def run(job: Job) -> JobResult:
        return JobResult(video_url=f"memory://{job.id}")

    def processor(job: Job, report: Report) -> Coroutine[None, None, JobResult]:
        if job.prompt == "boom":
            raise RuntimeError("injected: calling the processor raised")
        return run(job)

    q = queues.open(processor)

    async def one_batch() -> list[Submission]:  # submitted in one turn of the loop: one batch
        return list(
            await asyncio.gather(
                q.asubmit(request("boom", id="boom-1")), q.asubmit(request("fine", id="fine-2"))
            )
        )

    assert [sub.created for sub in asyncio.run(one_batch())] == [True, True]
    with pytest.raises(RuntimeError, match="calling the processor raised"):
        q.join(timeout_s=20)  # join re-raises a processor's bug
    q.join(timeout_s=20)
    assert q.get("fine-2").status == "completed"
    failed = q.get("boom-1")
    assert failed.status == "failed"
    assert failed.error == "internal error: RuntimeError: injected: calling the processor raised"


def test_a_submission_batch_that_fails_starts_none_of_its_jobs(queues, monkeypatch):
    """A batch's turn that fails (here: storing its second job) stores nothing, and none of
    its jobs runs or holds a slot: the queue comes back from storage (review finding: the
    first job, kept in memory, was started and paid for)."""
    real_create = JobActor.create

    def create(system, job):
        if job.prompt == "boom":
            raise RuntimeError("injected: storing a job failed")
        return real_create(system, job)

    monkeypatch.setattr(JobActor, "create", staticmethod(create))
    rec = Recorder()
    q = queues.open(rec)

    async def one_batch() -> list[object]:  # submitted in one turn of the loop: one batch
        return await asyncio.gather(
            q.asubmit(request("ghost", id="ghost-1")),
            q.asubmit(request("boom", id="boom-2")),
            return_exceptions=True,
        )

    assert [type(r) for r in asyncio.run(one_batch())] == [RuntimeError, RuntimeError]
    q.submit(request("normal", id="normal-3"))
    q.join(timeout_s=20)
    assert [c.job_id for c in rec.calls] == ["normal-3"]
    for job_id in ("ghost-1", "boom-2"):
        with pytest.raises(JobNotFound):
            q.get(job_id)
    assert q.status().in_flight == 0


def test_submitting_from_short_lived_loops_keeps_none_of_them_alive(queues):
    """`asyncio.run(q.asubmit(...))` per call: each loop is collected after it closes."""
    q = queues.open(Recorder())
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def submit(i: int) -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        await q.asubmit(request(f"from loop {i}"))

    for i in range(5):
        asyncio.run(submit(i))
    q.join(timeout_s=20)
    gc.collect()
    assert [ref() for ref in loops] == [None] * 5


def test_a_jobs_records_and_messages_are_not_tracked_by_the_cycle_collector(queues):
    """Data only (genqueue.models): the collector never walks them, however many jobs live.
    Each value here holds a container (msgspec leaves a struct of plain values untracked
    anyway), so each would be tracked without `gc=False`."""
    q = queues.open(Recorder())
    submitted = q.submit(request("untracked", provider=["veo3"]))
    q.join(timeout_s=20)
    done = q.get(submitted.job.id)  # read back from the store, decoded
    assert done.status == "completed" and done.result is not None
    image = ImageInput("aGk=", "image/png")
    routes = [Route("veo3", "m"), Route("fal", "f")]
    fallback = tuple(r.provider for r in routes)  # built at run time: a tracked tuple
    values = [
        submitted.job,
        done,
        msgspec.structs.replace(done, routes=routes),
        GenerationRequest("p", provider=["veo3", "fal"]),
        GenerationParams(reference_images=[image]),
        JobResult("v", videos=[VideoOutput("v")]),
        Pending(done.id, done.user_id, 0, 1, 0.0, fallback=fallback),
        Submit(done),
        SubmitMany((Submit(done),)),
        ReportMsg(checkpoint={"step": 1}),
    ]
    for value in values:
        assert not gc.is_tracked(value), value


# -- retention ----------------------------------------------------------------------------------


class Forgetting(Recorder):
    """A processor that keeps objects per job (as sqs mode's coordinator does on S3)."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.forgotten: list[str] = []

    async def delete_videos(self, jobs: list[object]) -> None:
        self.forgotten += [j.id for j in jobs]  # type: ignore[attr-defined]


def test_retention_removes_only_finished_jobs_older_than_the_window(queues):
    clock = ManualClock()
    rec = Forgetting(clock)
    rec.script["old-failed"] = [ProviderError("blocked by the safety filter", retryable=False)]
    rec.script["running"] = ["hold"]
    q = queues.open(
        rec,
        clock=clock,
        retention_days=1,
        retention_interval_s=3600,
        max_per_user=1,
        job_watchdog_s=10 * 86400,  # "running" stays processing across the days skipped
    )
    w = Watcher(q)
    for job_id in ("old-a", "old-b", "old-failed"):
        q.submit(request(id=job_id), user_id=job_id)
    q.submit(request(id="running"), user_id="holder")
    rec.wait_running("running")
    q.submit(request(id="old-cancelled"), user_id="holder")  # waits behind the user's cap
    q.cancel("old-cancelled")
    for job_id in ("old-a", "old-b", "old-failed"):
        w.wait_status(job_id, "completed", "failed")

    def counted(completed: int, failed: int, cancelled: int) -> None:
        # the queue indexes a job for retention when it counts its end, at its own time:
        # wait for that before moving the clock
        want = (completed, failed, cancelled)
        poll_until(
            lambda: (lambda s: (s.completed, s.failed, s.cancelled))(q.status()) == want,
            f"the queue to count {want}",
        )

    counted(2, 1, 1)
    clock.advance(12 * 3600)  # a retention pass runs here: nothing is old enough yet
    q.submit(request(id="young"), user_id="young")
    w.wait_status("young", "completed")
    counted(3, 1, 1)
    assert q.get("old-a").status == "completed"

    clock.advance(13 * 3600)  # the t0 jobs are now 25 h old, "young" 13 h
    old = ("old-a", "old-b", "old-failed", "old-cancelled")

    poll_until(lambda: all(removed(q, j) for j in old), "retention to remove the old jobs")
    st = q.status()  # a barrier: the retention turn is over
    assert q.get("young").status == "completed"
    assert q.get("running").status == "processing"  # unfinished jobs are never removed
    assert (st.completed, st.failed, st.cancelled) == (3, 1, 1)  # counters are kept
    with pytest.raises(JobNotFound):
        q.cancel("old-a")
    # every removed job's objects are deleted, failed and cancelled ones too (their
    # checkpoints and cancel notices in sqs mode), not only those with a video
    poll_until(lambda: sorted(rec.forgotten) == sorted(old), "the removed jobs' objects deleted")
    rec.release("running")
    q.join(timeout_s=20)


def test_a_client_id_reused_after_retention_runs_once_though_its_old_actor_is_live(queues):
    """A refused cancel of a finished job leaves its actor live, holding the finished record.
    Retention removes the job and its client id is submitted again: the new job's outcome
    reaches that instance, which reads the new record (review finding: it took the new job
    for the finished one, the job stayed in flight, and the watchdog had it paid twice)."""
    clock = ManualClock()
    rec = Recorder(clock)
    q = queues.open(
        rec,
        clock=clock,
        retention_days=10 / 86400,
        retention_interval_s=5,
        job_watchdog_s=100,
        idle_timeout_s=50,
    )
    q.submit(request(id="x"))
    q.join(timeout_s=20)
    with pytest.raises(IllegalTransition):
        q.cancel("x")  # answered by a live instance of x's actor, which stays live
    clock.advance(20)  # a retention pass removes x

    poll_until(lambda: removed(q, "x"), "retention to remove x")
    assert q.submit(request(id="x")).created
    q.join(timeout_s=20)
    assert q.get("x").status == "completed"
    clock.advance(300)  # past the watchdog: nothing is in flight to time out
    q.join(timeout_s=20)
    assert [c.attempt for c in rec.called("x")] == [1, 1]  # once each, never again


# -- submission --------------------------------------------------------------------------------


def test_idempotent_submission_returns_the_same_job_and_queues_nothing(queues):
    rec = Recorder()
    q = queues.open(rec)
    first, created = q.submit(request(id="client-1", prompt="first"))
    again, created_again = q.submit(request(id="client-1", prompt="second"))
    assert (created, created_again) == (True, False)
    assert again.id == first.id
    assert again.prompt == "first"
    assert again.created_at == first.created_at
    q.join(timeout_s=20)
    done, created_after = q.submit(request(id="client-1"))
    assert not created_after
    assert done.status == "completed"

    results: list[bool] = []
    barrier = threading.Barrier(8)

    def racer() -> None:
        barrier.wait()
        results.append(q.submit(request(id="client-2"))[1])

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(results) == [False] * 7 + [True]
    q.join(timeout_s=20)
    assert rec.order() == ["client-1", "client-2"]
    assert q.status().submitted == 2


def test_invalid_requests_are_refused_and_store_nothing(queues):
    q = queues.open(Recorder())
    with pytest.raises(InvalidRequest) as err:
        q.submit(request(prompt="   "))
    assert err.value.field == "prompt"
    with pytest.raises(InvalidRequest):
        q.submit(request(priority=11))
    with pytest.raises(InvalidRequest):
        q.submit({"prompt": "x", "unknown": 1})
    assert q.status().submitted == 0


# -- cancellation -------------------------------------------------------------------------------


def test_cancelling_a_queued_job_removes_it_at_once_and_it_never_runs(queues):
    rec = Recorder()
    rec.script["blocker"] = ["hold"]
    q = queues.open(rec, max_concurrency=1)
    q.submit(request(id="blocker"))
    rec.wait_running("blocker")
    q.submit(request(id="victim"))
    q.submit(request(id="after"))
    assert q.status().queued == 2

    job = q.cancel("victim", reason="user changed their mind")
    assert job.status == "cancelled"
    assert job.error == "user changed their mind"
    assert q.status().queued == 1  # removed at once, not when it reaches the head

    rec.release("blocker")
    q.join(timeout_s=20)
    assert rec.order() == ["blocker", "after"]
    assert q.get("victim").status == "cancelled"
    assert q.status().cancelled == 1


def test_cancelling_a_processing_job_cancels_its_coroutine(queues):
    rec = Recorder()
    rec.script["long"] = ["hold"]
    q = queues.open(rec, max_concurrency=1)
    w = Watcher(q)
    q.submit(request(id="long"))
    q.submit(request(id="next"))
    rec.wait_running("long")

    q.cancel("long")
    job = w.wait_status("long", "cancelled")
    assert job.error == "cancelled by request"
    assert rec.cancelled == ["long"]
    q.join(timeout_s=20)  # the freed slot goes to the next job
    assert rec.order() == ["long", "next"]
    assert w.terminal_events["long"] == ["cancelled"]
    assert q.status().cancelled == 1


def test_a_cancel_that_lands_as_the_processor_fails_ends_the_job_cancelled(queues):
    """A cancel is acknowledged while the processor is still running (its reason stored, its
    coroutine to be cancelled), but the processor fails on its own before the cancellation
    reaches it: the job ends cancelled, not retried and run (paid) again (review finding)."""
    clock = ManualClock()
    calls: list[int] = []

    async def processor(job: Job, report: Report) -> JobResult:
        calls.append(job.attempts)
        if len(calls) == 1:
            # the cancel lands now: a blocking call on the loop, so that the processor
            # fails before the loop can deliver the cancellation (a test's shortcut)
            assert q.cancel(job.id).status == "processing"
            raise retryable()
        return JobResult(video_url="memory://x")

    q = queues.open(processor, clock=clock, retry_backoff_s=2)
    w = Watcher(q)
    q.submit(request(id="flaky"))
    job = w.wait_status("flaky", "cancelled", "retry_wait")
    assert (job.status, job.error) == ("cancelled", "cancelled by request")
    clock.advance(10)  # no backoff alarm brings it back
    q.join(timeout_s=10)
    assert calls == [1]
    assert q.status().cancelled == 1


def test_cancelling_a_job_waiting_to_retry(queues):
    clock = ManualClock()
    rec = Recorder(clock)
    rec.script["flaky"] = [retryable()]
    q = queues.open(rec, clock=clock, retry_backoff_s=2)
    w = Watcher(q)
    q.submit(request(id="flaky"))
    w.wait_status("flaky", "retry_wait")
    assert q.cancel("flaky").status == "cancelled"
    q.join(timeout_s=10)  # nothing is left waiting to retry
    clock.advance(10)  # the backoff alarm is gone or does nothing
    q.join(timeout_s=10)
    assert rec.order() == ["flaky"]
    assert q.get("flaky").status == "cancelled"


def test_illegal_transitions_are_refused(queues):
    rec = Recorder()
    q = queues.open(rec)
    w = Watcher(q)
    q.submit(request(id="done"))
    w.wait_status("done", "completed")
    with pytest.raises(IllegalTransition):
        q.cancel("done")
    assert q.get("done").status == "completed"

    rec.script["gone"] = ["hold"]
    q.submit(request(id="gone"))
    rec.wait_running("gone")
    q.cancel("gone")
    w.wait_status("gone", "cancelled")
    with pytest.raises(IllegalTransition):
        q.cancel("gone")
    with pytest.raises(JobNotFound):
        q.cancel("no-such-job")
    with pytest.raises(JobNotFound):
        q.get("no-such-job")
    q.join(timeout_s=10)
    assert w.terminal_events == {"done": ["completed"], "gone": ["cancelled"]}


# -- retries, failures, the watchdog ----------------------------------------------------------


def test_a_retryable_error_retries_with_backoff_then_completes(queues):
    clock = ManualClock()
    t0 = clock.now()
    rec = Recorder(clock)
    rec.script["flaky"] = [retryable(), retryable(), "ok"]
    q = queues.open(rec, clock=clock, retry_backoff_s=2, max_attempts=3)
    w = Watcher(q)
    q.submit(request(id="flaky"))

    job = w.wait_status("flaky", "retry_wait")
    assert (job.attempts, job.error) == (1, "provider unavailable")
    assert job_alarm_at(q, "flaky") == t0 + 2  # the first backoff
    clock.advance(2)
    rec.wait_calls(2)
    poll_until(lambda: job_alarm_at(q, "flaky") == t0 + 2 + 4, "the doubled backoff")
    assert q.get("flaky").status == "retry_wait"
    clock.advance(4)
    rec.wait_calls(3)
    q.join(timeout_s=20)

    assert [(c.attempt, c.at) for c in rec.calls] == [(1, t0), (2, t0 + 2), (3, t0 + 6)]
    job = q.get("flaky")
    assert (job.status, job.attempts, job.result is not None) == ("completed", 3, True)
    assert q.status().retried == 2


def test_a_permanent_error_fails_with_its_message(queues):
    rec = Recorder()
    rec.script["bad"] = [ProviderError("blocked by the safety filter", retryable=False, status=400)]
    rec.script["tired"] = [retryable("upstream 503"), retryable("upstream 503 again")]
    q = queues.open(rec, max_attempts=2, retry_backoff_s=0.001)
    q.submit(request(id="bad"))
    q.submit(request(id="tired"))
    q.join(timeout_s=20)  # expected failures are not bugs: join does not raise

    bad = q.get("bad")
    assert (bad.status, bad.error, bad.attempts) == ("failed", "blocked by the safety filter", 1)
    tired = q.get("tired")
    assert (tired.status, tired.error, tired.attempts) == ("failed", "upstream 503 again", 2)
    assert q.status().failed == 2


def test_a_processor_bug_reraises_from_join(queues):
    rec = Recorder()
    rec.script["buggy"] = [ZeroDivisionError("division by zero in the processor")]
    q = queues.open(rec)
    q.submit(request(id="buggy"))
    with pytest.raises(ZeroDivisionError, match="in the processor"):
        q.join(timeout_s=20)
    job = q.get("buggy")
    assert job.status == "failed"
    assert "ZeroDivisionError" in (job.error or "")
    q.join(timeout_s=5)  # reported once


def test_the_watchdog_retries_a_job_stuck_past_its_timeout(queues):
    clock = ManualClock()
    t0 = clock.now()
    rec = Recorder(clock)
    rec.script["stuck"] = ["hold", "ok"]
    q = queues.open(rec, clock=clock, job_watchdog_s=30, retry_backoff_s=2)
    w = Watcher(q)
    q.submit(request(id="stuck"))
    rec.wait_running("stuck")
    # One alarm is the watchdog of every job in flight: the queue's, at the oldest's deadline.
    poll_until(lambda: queue_alarm_at(q) == t0 + 30, "the watchdog alarm")
    assert job_alarm_at(q, "stuck") is None

    clock.advance(30)
    job = w.wait_status("stuck", "retry_wait")
    assert job.error == "timed out after 30 s"
    assert rec.cancelled == ["stuck"]
    clock.advance(2)
    q.join(timeout_s=20)
    assert q.get("stuck").status == "completed"
    assert [c.at for c in rec.calls] == [t0, t0 + 32]


@pytest.mark.parametrize("mode", ["alarm", "immediate"])
def test_the_watchdog_times_out_each_job_at_its_own_deadline(queues, mode):
    clock = ManualClock()
    t0 = clock.now()
    rec = Recorder(clock)
    rec.script["first"] = ["hold", "ok"]
    rec.script["second"] = ["hold", "ok"]
    q = queues.open(rec, clock=clock, dispatch=mode, job_watchdog_s=30, retry_backoff_s=100)
    w = Watcher(q)
    q.submit(request(id="first"))
    rec.wait_running("first")
    clock.advance(10)
    q.submit(request(id="second"))
    rec.wait_running("second")
    poll_until(lambda: queue_alarm_at(q) == t0 + 30, "the first job's deadline")

    clock.advance(20)  # t0 + 30: only the first is past its time
    assert w.wait_status("first", "retry_wait").error == "timed out after 30 s"
    poll_until(lambda: queue_alarm_at(q) == t0 + 40, "the second job's deadline")
    assert q.get("second").status == "processing"

    clock.advance(10)  # t0 + 40
    assert w.wait_status("second", "retry_wait").error == "timed out after 30 s"
    assert rec.cancelled == ["first", "second"]


def test_the_watchdog_tells_a_stubborn_job_again_until_it_ends(queues):
    """A processor that shrugs off the first cancellation still holds its slot: the queue
    tells the job again one timeout later (a lost notice never keeps a job in flight)."""
    clock = ManualClock()
    shrugged = threading.Event()

    async def stubborn(job, report):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            shrugged.set()
        await asyncio.Event().wait()  # the second cancellation ends it

    q = queues.open(stubborn, clock=clock, job_watchdog_s=30, retry_backoff_s=1000)
    w = Watcher(q)
    q.submit(request(id="stubborn"))
    w.wait_status("stubborn", "processing")
    poll_until(lambda: queue_alarm_at(q) == clock.now() + 30, "the first deadline")
    clock.advance(30)
    assert shrugged.wait(10)
    assert q.get("stubborn").status == "processing"
    poll_until(lambda: queue_alarm_at(q) == clock.now() + 30, "the notice's repeat")
    clock.advance(30)
    assert w.wait_status("stubborn", "retry_wait").error == "timed out after 30 s"


def test_a_retry_in_immediate_mode_is_dispatched(queues):
    clock = ManualClock()
    rec = Recorder(clock)
    rec.script["flaky"] = [retryable()]
    q = queues.open(rec, clock=clock, dispatch="immediate", retry_backoff_s=2)
    w = Watcher(q)
    q.submit(request(id="flaky"))
    w.wait_status("flaky", "retry_wait")
    clock.advance(2)
    q.join(timeout_s=10)
    assert q.get("flaky").status == "completed"


# -- recovery ------------------------------------------------------------------------------------


def test_a_job_processing_at_restart_resumes_with_its_checkpoint(queues):
    rec = Recorder(hold_all=True)
    rec.checkpoint = {"operation": "operations/abc-123", "polls": 4}
    q = queues.open(rec, max_concurrency=1)
    w = Watcher(q)
    q.submit(request(id="resume-me"))
    q.submit(request(id="waiting"))
    job = w.wait_status("resume-me", "processing")
    with w.cv:
        w.cv.wait_for(lambda: w.latest["resume-me"].checkpoint is not None, 20)
    assert w.latest["resume-me"].progress == 50
    queues.close(q)  # the process goes away while the job is processing

    rec2 = Recorder()
    q2 = queues.open(rec2, max_concurrency=1)
    q2.join(timeout_s=20)
    first = rec2.calls[0]
    assert first.job_id == "resume-me"
    assert first.checkpoint == {"operation": "operations/abc-123", "polls": 4}
    assert first.attempt == job.attempts == 1  # resumed, not a new attempt
    assert rec2.order() == ["resume-me", "waiting"]
    assert q2.get("resume-me").status == "completed"


def test_a_checkpoint_is_stored_as_reported_whatever_the_processor_does_after(queues):
    """`report` keeps a copy: a processor that reuses its dict changes nothing stored, and a
    value the store cannot hold is refused at the call, in the processor."""
    refused: list[BaseException] = []
    seen: list[object] = []

    async def process(job: Job, report: Report) -> JobResult:
        ckpt = {"step": "start", "seen": [1]}
        await report(progress=10, checkpoint=ckpt)
        ckpt["step"] = "changed after"
        ckpt["seen"].append(2)
        await report(progress=20)  # the job's record is stored again
        seen.append((await q.aget(job.id)).checkpoint)
        try:
            await report(checkpoint={"handle": object()})
        except TypeError as exc:
            refused.append(exc)
        return JobResult(video_url="memory://x")

    q = queues.open(process)
    q.submit(request(id="reuses-its-dict"))
    q.join(timeout_s=20)
    done = q.get("reuses-its-dict")
    assert done.status == "completed"
    assert seen == [{"step": "start", "seen": [1]}]
    assert done.checkpoint == {"step": "start", "seen": [1]}
    assert len(refused) == 1


# -- the asyncio API -----------------------------------------------------------------------------


def test_the_async_api_never_blocks_the_callers_loop(queues):
    rec = Recorder()
    rec.script["held"] = ["hold"]
    q = queues.open(rec)

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        job, created = await q.asubmit(request(id="async-1"))
        assert created and job.status == "queued"
        held, _ = await q.asubmit(request(id="held"))
        await asyncio.to_thread(rec.wait_running, held.id)
        assert (await q.aget(held.id)).status == "processing"
        cancelled = await q.acancel(held.id)
        assert cancelled.id == held.id
        await asyncio.to_thread(q.join, 20)
        assert (await q.aget("async-1")).status == "completed"
        st = await q.astatus()
        assert (st.completed, st.cancelled) == (1, 1)
        assert ticks > 0
        t.cancel()

    asyncio.run(main())
