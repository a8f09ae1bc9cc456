"""`dispatch = "sqs"` with real processes: a coordinator (`main.py serve`), workers
(`main.py worker`), moto's server (SQS and S3), the fake Veo and the verifying receiver."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers_cluster import Cluster
from helpers_procs import (
    MAIN,
    Api,
    Child,
    FakeVeoProc,
    Receiver,
    child_env,
    eventually,
    run,
)

from genqueue.cluster.messages import Checkpoint, ErrorInfo, Heartbeat, JobBeat, Outcome, encode
from genqueue.cluster.messages import decode_work as decode_work_body
from genqueue.models import JobResult

PRICE_PER_S = 0.5


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def fake(logs: Path) -> Iterator[FakeVeoProc]:
    proc = FakeVeoProc(logs, latency_s=0.5).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def receiver(logs: Path) -> Iterator[Receiver]:
    rec = Receiver(logs).start()
    yield rec
    rec.stop()


@pytest.fixture
def cluster(
    logs: Path, moto_endpoint: str, fake: FakeVeoProc, receiver: Receiver
) -> Iterator[Cluster]:
    c = Cluster(logs, moto_endpoint, fake, receiver)
    yield c
    c.stop_workers()


def _prompts(ops: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in ops:
        counts[op["prompt"]] = counts.get(op["prompt"], 0) + 1
    return counts


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_sqs_refused_without_s3(logs: Path, command: str) -> None:
    env = child_env(GENQUEUE_DISPATCH="sqs", GENQUEUE_DATA_DIR=str(logs / f"refuse-{command}"))
    child = Child([MAIN, command], logs, f"refuse-{command}", env).start()
    assert child.proc is not None
    assert child.proc.wait(timeout=20) == 2
    child.stop()
    err = child.err_path.read_text()
    assert "GENQUEUE_DISPATCH=sqs requires GENQUEUE_STORAGE=s3" in err, err


# -- the happy path, and what the status shows ------------------------------------------------


def test_jobs_complete_on_workers_and_status_lists_them(cluster: Cluster) -> None:
    cluster.worker("happy-w1", concurrency=4)
    cluster.worker("happy-w2", concurrency=3)
    # priced: what the workers' starts paid is charged by the coordinator (sqs mode stores
    # the generation's checkpoint under the attempt's, one level down)
    with cluster.coordinator("happy-coordinator", VEO3_PRICE_PER_S=str(PRICE_PER_S)) as server:

        async def scenario(api: Api, session: aiohttp.ClientSession) -> Any:
            jobs = [await api.submit({"prompt": f"happy {i}"}) for i in range(6)]
            done = await api.wait_all([j["id"] for j in jobs], 30)

            async def both_workers() -> tuple[bool, Any]:
                st = await api.queue_status()
                workers = st["cluster"]["workers"]
                return len(workers) == 2 and "work" in st["cluster"]["queues"], st

            status = await eventually(both_workers, "two workers in the status", 15)
            async with session.get(f"{server.url}/metrics", headers=api.headers) as resp:
                metrics = await resp.text()
            return done, status, metrics

        done, status, metrics = run(server, scenario)
    assert {j["status"] for j in done.values()} == {"completed"}, done
    assert all(j["result"]["videoUrl"] for j in done.values())
    workers = {w["concurrency"]: w for w in status["cluster"]["workers"]}
    assert set(workers) == {3, 4}
    assert all(w["host"] and w["lastHeartbeatAgoS"] < 15 for w in workers.values())
    assert set(status["cluster"]["queues"]) == {"work", "events", "dlq"}
    assert status["cluster"]["deadLetterDepth"] == 0
    assert "genqueue_cluster_worker_in_flight{" in metrics
    assert "genqueue_cluster_queues_work_visible" in metrics
    paid = len(done) * 8 * PRICE_PER_S  # one start each, the default 8 s
    assert status["spend"]["total"] == pytest.approx(paid), status["spend"]
    assert status["spend"]["byProvider"] == {"veo3": pytest.approx(paid)}, status["spend"]


# -- events: duplicates, late, stale (the test plays the worker) ----------------------------------


def test_duplicate_late_and_stale_events_change_nothing(
    cluster: Cluster, receiver: Receiver
) -> None:
    sqs = cluster.sqs()

    def send(event: Any, group: str, dedup: str) -> None:
        sqs.send_message(
            QueueUrl=cluster.queue_url("events"),
            MessageBody=encode(event),
            MessageGroupId=group,
            MessageDeduplicationId=dedup,
        )

    with cluster.coordinator("events-coordinator") as server:

        async def scenario(api: Api, session: aiohttp.ClientSession) -> Any:
            work_url, events_url = cluster.queue_url("work"), cluster.queue_url("events")
            job = await api.submit({"prompt": "events under test"})

            async def work() -> tuple[bool, Any]:
                got = await asyncio.to_thread(
                    sqs.receive_message, QueueUrl=work_url, WaitTimeSeconds=1
                )
                return bool(got.get("Messages")), got

            msg = (await eventually(work, "the work message", 15))["Messages"][0]
            w = decode_work_body(msg["Body"])
            assert (w.job.id, w.attempt, w.checkpoint) == (job["id"], 1, None)
            jid = job["id"]
            ck = Checkpoint(
                job_id=jid, attempt=1, worker_id="t", checkpoint={"operation": "op/1"}, progress=5
            )
            stale = Outcome(
                job_id=jid,
                attempt=0,
                worker_id="t",
                error=ErrorInfo(message="stale", retryable=False),
            )
            done = Outcome(job_id=jid, attempt=1, worker_id="t", result=JobResult(video_url="u"))
            failed = Outcome(
                job_id=jid,
                attempt=1,
                worker_id="t",
                error=ErrorInfo(message="late", retryable=False),
            )
            beat = Heartbeat(worker_id="t", host="h", concurrency=1, jobs=(JobBeat(jid, 1, 40),))
            send(ck, jid, "c1")
            send(ck, jid, "c2")  # the same checkpoint twice (another dedup id)
            send(beat, "t", "b1")
            send(stale, jid, "s1")  # an earlier attempt's outcome: ignored

            async def progressed() -> tuple[bool, Any]:
                j = await api.job(jid)
                return j["progress"] == 40 and j["status"] == "processing", j

            await eventually(progressed, "the heartbeat's progress applied", 15)
            send(done, jid, "d1")
            send(done, jid, "d2")  # a duplicate outcome
            send(failed, jid, "f1")  # a late, contradicting outcome
            send(ck, jid, "c3")  # a late checkpoint
            final = await api.wait_job(jid, 15)

            async def drained() -> tuple[bool, Any]:
                attrs = (
                    await asyncio.to_thread(
                        sqs.get_queue_attributes, QueueUrl=events_url, AttributeNames=["All"]
                    )
                )["Attributes"]
                left = int(attrs["ApproximateNumberOfMessages"]) + int(
                    attrs["ApproximateNumberOfMessagesNotVisible"]
                )
                return left == 0, attrs

            await eventually(drained, "every event applied or dropped", 20)
            hooks = await receiver.events_for(session, {jid}, {"generation.completed"}, 15)
            return final, await api.job(jid), hooks[jid]

        final, again, hooks = run(server, scenario, timeout_s=90)
    assert final["status"] == "completed" and final["result"]["videoUrl"] == "u"
    assert again["status"] == "completed" and again["error"] is None
    assert [h["event"] for h in hooks] == ["generation.completed"], hooks


# -- cancel reaches the worker -----------------------------------------------------------------


def test_cancel_of_a_running_job_reaches_its_worker(cluster: Cluster, fake: FakeVeoProc) -> None:
    cluster.worker("cancel-w1", concurrency=2)
    sqs = cluster.sqs()
    with cluster.coordinator("cancel-coordinator") as server:

        async def scenario(api: Api, session: aiohttp.ClientSession) -> Any:
            await fake.faults(session, latency_s=120)
            try:
                job = await api.submit({"prompt": "cancel me while running"})

                async def checkpointed() -> tuple[bool, Any]:
                    j = await api.job(job["id"])
                    return j["status"] == "processing" and j["progress"] >= 5, j

                await eventually(checkpointed, "the job running on the worker", 20)
                status, cancelled = await api.call("DELETE", f"/api/generations/{job['id']}")
                assert status == 202, cancelled  # a running job: being stopped
                await api.wait_job(job["id"], 15)

                async def worker_stopped() -> tuple[bool, Any]:
                    attrs = (
                        await asyncio.to_thread(
                            sqs.get_queue_attributes,
                            QueueUrl=cluster.queue_url("work"),
                            AttributeNames=["All"],
                        )
                    )["Attributes"]
                    held = int(attrs["ApproximateNumberOfMessagesNotVisible"])
                    return held == 0, attrs

                # The worker deletes the work message only once it stopped and said so.
                await eventually(worker_stopped, "the worker to drop the cancelled job", 20)
                ops = await fake.ops(session, "cancel me while running")
                return await api.job(job["id"]), ops
            finally:
                await fake.faults(session, latency_s=0.5)

        job, ops = run(server, scenario, timeout_s=90)
    assert job["status"] == "cancelled"
    assert len(ops) == 1 and ops[0]["downloads"] == 0, ops


# -- the dead-letter queue -------------------------------------------------------------------


def test_a_work_message_received_too_often_fails_its_job(cluster: Cluster) -> None:
    sqs = cluster.sqs()
    with cluster.coordinator("dlq-coordinator", GENQUEUE_SQS_MAX_RECEIVES="2") as server:

        async def scenario(api: Api, session: aiohttp.ClientSession) -> Any:
            job = await api.submit({"prompt": "poison"})
            url = cluster.queue_url("work")
            receives = 0

            async def dying_workers() -> tuple[bool, Any]:
                # Workers that take the message and die at once (it comes straight back).
                nonlocal receives
                got = await asyncio.to_thread(
                    sqs.receive_message, QueueUrl=url, WaitTimeSeconds=1, VisibilityTimeout=0
                )
                receives += len(got.get("Messages", []))
                j = await api.job(job["id"])
                return j["status"] == "failed", (receives, j)

            _, failed = await eventually(dying_workers, "the job failed by the DLQ", 30)
            return receives, failed

        receives, failed = run(server, scenario, timeout_s=60)
    assert receives == 2
    assert "dead-letter queue" in failed["error"], failed
    assert failed["attempts"] == 1


# -- crashes: 60 jobs, a worker killed, the coordinator killed, a worker stopped ----------------


def test_sixty_jobs_survive_kills_of_workers_and_coordinator(
    cluster: Cluster, fake: FakeVeoProc, receiver: Receiver
) -> None:
    rate = 50
    cluster.config = {"max_concurrency": 16}
    env = {"GENQUEUE_RATE_LIMIT_PER_MINUTE": str(rate), "GENQUEUE_MAX_CONCURRENCY": "16"}
    w1 = cluster.worker("crash-w1", concurrency=8)
    first = cluster.coordinator("crash-coordinator-1", **env).start()
    prompts = [f"cluster crash {i}" for i in range(60)]
    ids = [f"crash-{i}" for i in range(60)]
    workers: dict[str, Child] = {}

    async def main() -> Any:
        async with aiohttp.ClientSession() as session:
            try:
                return await asyncio.wait_for(scenario(session), 150)
            finally:
                await fake.faults(session, latency_s=0.5)

    async def scenario(session: aiohttp.ClientSession) -> Any:
        api = first.api(session)
        # The first 8 go to w1 alone, and take long enough for w1 to be killed mid-way: 25 s
        # (under load, starting w2 and w3 and seeing them listed took more than 8 s).
        await fake.faults(session, latency_s=25.0)
        for job_id, prompt in zip(ids[:8], prompts[:8], strict=True):
            await api.submit({"id": job_id, "prompt": prompt})

        async def w1_checkpointed() -> tuple[bool, Any]:
            jobs = [await api.job(i) for i in ids[:8]]
            ok = all(j["status"] == "processing" and j["progress"] >= 5 for j in jobs)
            return ok, [(j["status"], j["progress"]) for j in jobs]

        await eventually(w1_checkpointed, "w1 running 8 checkpointed jobs", 30)
        workers["w2"] = cluster.worker("crash-w2", concurrency=8)
        workers["w3"] = cluster.worker("crash-w3", concurrency=8)

        async def three_workers() -> tuple[bool, Any]:
            st = await api.queue_status()
            return len(st["cluster"]["workers"]) == 3, st["cluster"]["workers"]

        await eventually(three_workers, "w2 and w3 listed", 30)
        # Nothing is queued, so no start is in flight: the kill lands mid-generation only.
        w1.sigkill()
        await fake.faults(session, latency_s=2.0)
        for job_id, prompt in zip(ids[8:], prompts[8:], strict=True):
            await api.submit({"id": job_id, "prompt": prompt})

        async def some_done(n: int) -> Any:
            async def check() -> tuple[bool, Any]:
                done = [j for j in [await api.job(i) for i in ids] if j["status"] == "completed"]
                return len(done) >= n, len(done)

            return await eventually(check, f"{n} jobs completed", 60)

        await some_done(15)
        first.child.sigkill()
        polls = (await fake.stats(session))["polls"]

        async def workers_carry_on() -> tuple[bool, Any]:
            now = (await fake.stats(session))["polls"]
            return now > polls + 20, now

        await eventually(workers_carry_on, "workers polling while the coordinator is down", 20)
        second = cluster.coordinator("crash-coordinator-2", **env).start()
        try:
            api = second.api(session)
            await some_done(25)
            assert workers["w2"].stop(timeout_s=40) == 0  # SIGTERM: hands back, exits 0
            jobs = await api.wait_all(ids, 120)
            hooks = await receiver.events_for(session, set(ids), {"generation.completed"}, 30)
            stats = await fake.stats(session)
            return jobs, hooks, stats
        finally:
            second.stop()

    try:
        jobs, hooks, stats = asyncio.run(main())
    finally:
        first.stop()
    assert {j["status"] for j in jobs.values()} == {"completed"}, [
        (j["id"], j["status"], j["error"]) for j in jobs.values() if j["status"] != "completed"
    ]
    for job_id, deliveries in hooks.items():
        hook_ids = {d["id"] for d in deliveries if d["event"] == "generation.completed"}
        assert len(hook_ids) == 1, (job_id, deliveries)
        assert all(d["event"] == "generation.completed" for d in deliveries), deliveries
    ops = [op for op in stats["operations"] if op["prompt"] in set(prompts)]
    counts = _prompts(ops)
    assert set(counts) == set(prompts)
    assert max(counts.values()) == 1, {p: n for p, n in counts.items() if n > 1}
    # w1's checkpointed jobs were resumed elsewhere (on the same operation: above).
    others = cluster.workers["crash-w2"].err_path.read_text()
    others += cluster.workers["crash-w3"].err_path.read_text()
    for job_id in ids[:8]:
        pattern = rf'"generation started","job_id":"{job_id}"[^\n]*"resumed":true'
        assert re.search(pattern, others), job_id
    starts = sorted(op["startedAt"] for op in ops)
    # The coordinator spends a token at dispatch; the start follows within a receive. So
    # any 60 s window, less that latency (2 s), holds at most `rate` starts.
    for i, t in enumerate(starts):
        in_window = sum(1 for u in starts[i:] if u < t + 58)
        assert in_window <= rate, (i, in_window)
    assert starts[-1] - starts[0] >= 58  # the limit held the last jobs back a minute


# -- a 429 at any worker pauses dispatch for all ------------------------------------------------


def test_a_429_at_a_worker_pauses_dispatch_for_all(cluster: Cluster, fake: FakeVeoProc) -> None:
    cluster.worker("limited-w1", concurrency=4)
    with cluster.coordinator("limited-coordinator") as server:

        async def scenario(api: Api, session: aiohttp.ClientSession) -> Any:
            await api.submit({"prompt": "limited first"})  # a start within the fake's minute
            await fake.faults(session, rate_limit_per_minute=1)
            try:
                await api.submit({"prompt": "limited second"})  # its start gets a 429

                async def paused() -> tuple[bool, Any]:
                    st = await api.queue_status()
                    return st["pausedUntil"] is not None and st["rateLimitHits"] >= 1, st

                # The worker retries the 429 itself: the pause comes from its notice.
                await eventually(paused, "dispatch paused by the worker's 429", 20)
                third = await api.submit({"prompt": "limited third"})
                st = await api.queue_status()
                return st, await api.job(third["id"]), (await fake.stats(session))["rateLimited"]
            finally:
                await fake.faults(session, rate_limit_per_minute=0)

        st, third, limited = run(server, scenario, timeout_s=60)
    assert limited >= 1
    assert st["inFlight"] < st["maxConcurrency"]
    assert third["status"] == "queued"  # held back for everyone until the pause ends


# -- a worker killed mid-generation: another polls the same operation ---------------------------


def test_a_killed_workers_job_is_resumed_on_the_same_operation(
    cluster: Cluster, fake: FakeVeoProc
) -> None:
    prompt = "resume me on another worker"
    first = cluster.worker("resume-w1", concurrency=1)
    with cluster.coordinator("resume-coordinator") as server:

        async def scenario(api: Api, session: aiohttp.ClientSession) -> Any:
            await fake.faults(session, latency_s=6)
            try:
                job = await api.submit({"prompt": prompt})

                async def checkpointed() -> tuple[bool, Any]:
                    j = await api.job(job["id"])
                    return j["status"] == "processing" and j["progress"] >= 5, j

                await eventually(checkpointed, "the job checkpointed on the first worker", 20)
                first.sigkill()
                second = cluster.worker("resume-w2", concurrency=1)
                done = await api.wait_job(job["id"], 40)
                return done, await fake.ops(session, prompt), second
            finally:
                await fake.faults(session, latency_s=0.5)

        done, ops, second = run(server, scenario, timeout_s=90)
    assert done["status"] == "completed", done
    assert done["attempts"] == 1  # resumed within the attempt, not retried
    assert len(ops) == 1 and ops[0]["downloads"] == 1, ops  # one paid start
    log = second.err_path.read_text()
    assert re.search(rf'"generation started","job_id":"{done["id"]}"[^\n]*"resumed":true', log)
