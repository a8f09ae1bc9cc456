"""The webhook outbox end to end: JobQueue -> WebhookActor -> a real aiohttp receiver.

The receiver runs on loopback in its own loop thread; the queue runs on a manual clock
(started at the real time, so `standardwebhooks` accepts the timestamps), and the tests
walk it through the retry schedule. Signatures are checked with `standardwebhooks`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from helpers_queue import WAIT_S, QueueFactory, poll_until, queue_factory, removed
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from genqueue import Job, JobQueue, JobResult, WebhookStats
from genqueue.actors.bridge import LoopThread
from genqueue.actors.webhook import TERMINAL_SEQ
from genqueue.clock import ManualClock
from genqueue.webhooks import delivery_id

SECRET_A = "whsec_" + base64.b64encode(b"secret-a-" * 4).decode()
SECRET_B = "whsec_" + base64.b64encode(b"secret-b-" * 4).decode()
CHILD = Path(__file__).with_name("webhook_child.py")


# -- a real receiver on loopback ---------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    webhook_id: str
    event: str
    job_id: str
    status: int  # what the receiver answered
    body: bytes
    headers: dict[str, str]


class Receiver:
    """Records every request; answers `status`, or what `answer(payload)` says; can hang."""

    def __init__(self, loop_thread: LoopThread):
        self.lt = loop_thread
        self.cv = threading.Condition()
        self.hits: list[Hit] = []
        self.status = 200
        self.answer: Callable[[dict[str, Any]], int | None] | None = None
        self.hang_jobs: set[str] = set()
        self._gate: asyncio.Event | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        payload = json.loads(body)
        with self.cv:
            status = (self.answer(payload) if self.answer else None) or self.status
            hang = payload["jobId"] in self.hang_jobs
        if hang:
            assert self._gate is not None
            await self._gate.wait()
        hit = Hit(
            request.headers["webhook-id"],
            payload["event"],
            payload["jobId"],
            status,
            body,
            dict(request.headers),
        )
        with self.cv:
            self.hits.append(hit)
            self.cv.notify_all()
        return web.Response(status=status)

    async def _start(self) -> None:
        self._gate = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/hook"

    async def _stop(self) -> None:
        if self._gate is not None:
            self._gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def start(self) -> Receiver:
        self.lt.run(self._start(), timeout_s=10)
        return self

    def stop(self) -> None:
        self.lt.run(self._stop(), timeout_s=10)

    def release(self) -> None:
        """Let hanging requests answer."""
        gate = self._gate
        assert gate is not None
        self.lt.loop.call_soon_threadsafe(gate.set)

    def wait(self, predicate: Callable[[list[Hit]], bool], what: str) -> list[Hit]:
        with self.cv:
            if not self.cv.wait_for(lambda: predicate(self.hits), WAIT_S):
                raise AssertionError(f"receiver: timed out waiting for {what}; {self.hits}")
            return list(self.hits)

    def wait_count(self, n: int) -> list[Hit]:
        return self.wait(lambda hits: len(hits) >= n, f"{n} requests")

    def snapshot(self) -> list[Hit]:
        with self.cv:
            return list(self.hits)


@pytest.fixture
def rx() -> Iterator[Receiver]:
    lt = LoopThread(name="receiver")
    lt.start()
    receiver = Receiver(lt).start()
    try:
        yield receiver
    finally:
        receiver.stop()
        lt.stop()


@pytest.fixture
def queues(tmp_path: Path) -> Iterator[QueueFactory]:
    with queue_factory(tmp_path) as factory:
        yield factory


async def instant(job: Job, report: Any) -> JobResult:
    return JobResult(video_url=f"https://cdn.example/{job.id}.mp4", duration=8)


def open_queue(queues: QueueFactory, rx: Receiver, clock: ManualClock, **settings: Any) -> JobQueue:
    settings.setdefault("webhook_secret", SECRET_A)
    settings.setdefault("webhook_retry_s", "0,1,2,3")
    return queues.open(instant, clock=clock, webhook_url=rx.url, **settings)


def wait_stats(q: JobQueue, predicate: Callable[[WebhookStats], bool], what: str) -> WebhookStats:
    """The outbox's counters raise no event: check them until `predicate` holds."""
    poll_until(lambda: predicate(q.webhooks.stats()), what)
    return q.webhooks.stats()


def submit(q: JobQueue, job_id: str) -> str:
    return q.submit({"prompt": "a cat surfing", "id": job_id}).job.id


# -- tests ---------------------------------------------------------------------------------


def test_completion_delivery_verifies(queues: QueueFactory, rx: Receiver) -> None:
    q = open_queue(queues, rx, ManualClock(time.time()))
    job, _ = q.submit({"prompt": "a cat surfing", "id": "job-1"})
    (hit,) = rx.wait_count(1)
    payload = Webhook(SECRET_A).verify(hit.body, hit.headers)
    assert payload["event"] == "generation.completed" and payload["jobId"] == "job-1"
    assert payload["result"]["videoUrl"] == "https://cdn.example/job-1.mp4"
    assert hit.webhook_id == delivery_id(job.generation_id, TERMINAL_SEQ)
    stats = wait_stats(q, lambda s: s.sent == 1, "sent == 1")
    assert (stats.pending, stats.failed_attempts, stats.dead) == (0, 0, 0)
    assert stats.oldest_pending_age_s is None


def test_receiver_down_then_up_delivers_with_one_webhook_id(
    queues: QueueFactory, rx: Receiver
) -> None:
    clock = ManualClock(time.time())
    rx.status = 503
    q = open_queue(queues, rx, clock)
    submit(q, "job-down")
    for n, delay_s in enumerate((1, 2), start=1):
        rx.wait_count(n)
        wait_stats(q, lambda s, n=n: s.failed_attempts == n, f"{n} failed attempts")
        clock.advance(delay_s * 1.11)  # the schedule, plus its most jitter
    rx.wait_count(3)
    wait_stats(q, lambda s: s.failed_attempts == 3, "3 failed attempts")
    stats = q.webhooks.stats()
    assert stats.pending == 1 and stats.sent == 0
    assert stats.oldest_pending_age_s is not None and stats.oldest_pending_age_s >= 3
    rx.status = 200
    clock.advance(3 * 1.11)
    hits = rx.wait_count(4)
    assert [h.status for h in hits] == [503, 503, 503, 200]
    assert len({h.webhook_id for h in hits}) == 1
    stamps = [int(h.headers["webhook-timestamp"]) for h in hits]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] >= 6
    for h in hits:
        Webhook(SECRET_A).verify(h.body, h.headers)  # each attempt signed with its own time
    stats = wait_stats(q, lambda s: s.sent == 1, "sent == 1")
    assert (stats.failed_attempts, stats.retries, stats.dead, stats.pending) == (3, 3, 0, 0)


def test_410_dead_letters_at_once_and_replay_resends(queues: QueueFactory, rx: Receiver) -> None:
    rx.status = 410
    q = open_queue(queues, rx, ManualClock(time.time()))
    submit(q, "job-gone")
    rx.wait_count(1)
    stats = wait_stats(q, lambda s: s.dead == 1, "dead == 1")
    assert (stats.pending, stats.dead_letters, stats.retries) == (0, 1, 0)
    (dead,) = q.webhooks.dead().deliveries
    assert dead.state == "dead" and dead.last_status == 410 and dead.attempts == 1
    rx.status = 200
    q.webhooks.replay(dead.id)
    hits = rx.wait_count(2)
    assert [h.status for h in hits] == [410, 200]
    assert hits[0].webhook_id == hits[1].webhook_id == dead.id
    assert hits[0].body == hits[1].body
    stats = wait_stats(q, lambda s: s.sent == 1, "sent == 1")
    assert (stats.dead, stats.dead_letters, stats.pending) == (1, 0, 0)
    assert q.webhooks.dead().deliveries == []


def test_last_attempt_dead_letters_and_survives_reopen(queues: QueueFactory, rx: Receiver) -> None:
    clock = ManualClock(time.time())
    rx.status = 500
    q = open_queue(queues, rx, clock, webhook_retry_s="0,1")
    submit(q, "job-x")
    wait_stats(q, lambda s: s.failed_attempts == 1, "a failed attempt")
    clock.advance(1.2)
    stats = wait_stats(q, lambda s: s.dead == 1, "dead == 1")
    assert (stats.failed_attempts, stats.retries, stats.pending) == (2, 1, 0)
    queues.close(q)
    q = open_queue(queues, rx, clock, webhook_retry_s="0,1")
    (dead,) = q.webhooks.dead().deliveries
    assert dead.attempts == 2 and dead.last_status == 500
    assert q.webhooks.stats().dead_letters == 1  # counters are persisted


def test_rotation_verifies_with_either_secret(queues: QueueFactory, rx: Receiver) -> None:
    q = open_queue(queues, rx, ManualClock(time.time()), webhook_secret=f"{SECRET_A} {SECRET_B}")
    submit(q, "job-rot")
    (hit,) = rx.wait_count(1)
    assert Webhook(SECRET_A).verify(hit.body, hit.headers)["jobId"] == "job-rot"
    assert Webhook(SECRET_B).verify(hit.body, hit.headers)["jobId"] == "job-rot"
    other = "whsec_" + base64.b64encode(b"secret-c-" * 4).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(hit.body, hit.headers)


def test_slow_receiver_does_not_hold_up_other_jobs(queues: QueueFactory, rx: Receiver) -> None:
    rx.hang_jobs.add("job-slow")
    q = open_queue(queues, rx, ManualClock(time.time()))
    submit(q, "job-slow")
    wait_stats(q, lambda s: s.in_flight == 1, "the slow delivery in flight")
    submit(q, "job-fast")
    (hit,) = rx.wait(lambda hits: any(h.job_id == "job-fast" for h in hits), "job-fast")
    assert hit.status == 200
    stats = wait_stats(q, lambda s: s.sent == 1, "sent == 1")
    assert stats.in_flight == 1 and stats.pending == 1
    rx.release()
    rx.wait_count(2)
    wait_stats(q, lambda s: s.sent == 2 and s.pending == 0, "both sent")


def test_events_of_one_job_arrive_in_order(queues: QueueFactory, rx: Receiver) -> None:
    clock = ManualClock(time.time())
    failed_once: list[str] = []

    def answer(payload: dict[str, Any]) -> int | None:
        if payload["event"] == "generation.started" and not failed_once:
            failed_once.append(payload["jobId"])
            return 503
        return None

    rx.answer = answer
    q = open_queue(queues, rx, clock, webhook_events_started=True)
    submit(q, "job-ord")
    # The completed event is stored, but waits behind the started one that failed.
    wait_stats(q, lambda s: s.failed_attempts == 1 and s.pending == 2, "started failed")
    assert [(h.event, h.status) for h in rx.snapshot()] == [("generation.started", 503)]
    clock.advance(1.2)
    hits = rx.wait_count(3)
    assert [(h.event, h.status) for h in hits] == [
        ("generation.started", 503),
        ("generation.started", 200),
        ("generation.completed", 200),
    ]
    wait_stats(q, lambda s: s.sent == 2 and s.pending == 0, "both sent")


def test_sigkill_with_deliveries_pending_then_restart_delivers_all(
    queues: QueueFactory, rx: Receiver, tmp_path: Path
) -> None:
    n = 5
    rx.status = 503
    data_dir = tmp_path / "data"
    cmd = [sys.executable, str(CHILD), str(data_dir), rx.url, str(n)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    done: list[str] = []
    try:
        while len(done) < n:
            line = proc.stdout.readline()
            if not line.endswith("\n"):
                break
            done.append(line.strip())
        rx.wait_count(1)  # at least one attempt failed before the kill
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=30)
    assert len(done) == n, err
    assert proc.returncode == -signal.SIGKILL
    rx.status = 200
    clock = ManualClock(time.time())
    q = open_queue(queues, rx, clock, webhook_secret="", webhook_retry_s="0,1,2")
    clock.advance(1.2)  # the retries the child scheduled are due
    wait_stats(q, lambda s: s.sent >= n and s.pending == 0, "all delivered after restart")
    delivered = {h.webhook_id for h in rx.snapshot() if h.status == 200}
    assert delivered == {delivery_id(q.get(j).generation_id, TERMINAL_SEQ) for j in done}


async def reports_30_then_60(job: Job, report: Any) -> JobResult:
    await report(progress=30)
    await report(progress=30)  # unchanged: no event
    await report(progress=60)
    return JobResult(video_url=f"https://cdn.example/{job.id}.mp4", duration=8)


@pytest.mark.parametrize("enabled", [True, False])
def test_progress_events_arrive_in_order_before_completed(
    queues: QueueFactory, rx: Receiver, enabled: bool
) -> None:
    clock = ManualClock(time.time())
    q = queues.open(
        reports_30_then_60,
        clock=clock,
        webhook_url=rx.url,
        webhook_secret=SECRET_A,
        webhook_events_progress=enabled,
    )
    submit(q, "job-prog")
    wanted = 3 if enabled else 1
    wait_stats(q, lambda s: s.sent == wanted and s.pending == 0, f"{wanted} sent")
    hits = rx.snapshot()
    payloads = [Webhook(SECRET_A).verify(h.body, h.headers) for h in hits]
    expected = [("generation.progress", 30), ("generation.progress", 60)] if enabled else []
    expected.append(("generation.completed", None))
    assert [(p["event"], p.get("progress")) for p in payloads] == expected
    assert all(p["jobId"] == "job-prog" and p["status"] for p in payloads)
    assert len({h.webhook_id for h in hits}) == len(hits)  # one webhook-id per event
    assert hits[-1].webhook_id == delivery_id(q.get("job-prog").generation_id, TERMINAL_SEQ)
    assert [p["status"] for p in payloads[:-1]] == ["processing"] * (len(payloads) - 1)


def test_a_failed_progress_event_holds_back_the_later_ones(
    queues: QueueFactory, rx: Receiver
) -> None:
    clock = ManualClock(time.time())
    failed: list[int] = []

    def answer(payload: dict[str, Any]) -> int | None:
        if payload["event"] == "generation.progress" and not failed:
            failed.append(payload["progress"])
            return 503
        return None

    rx.answer = answer
    q = queues.open(
        reports_30_then_60,
        clock=clock,
        webhook_url=rx.url,
        webhook_retry_s="0,1",
        webhook_events_progress=True,
    )
    submit(q, "job-hold")
    # 60 and completed are stored, but wait behind the progress event that failed.
    wait_stats(q, lambda s: s.failed_attempts == 1 and s.pending == 3, "progress 30 failed")
    assert len(rx.snapshot()) == 1
    clock.advance(1.2)
    wait_stats(q, lambda s: s.sent == 3 and s.pending == 0, "all three sent")
    seen = [(h.event, json.loads(h.body).get("progress"), h.status) for h in rx.snapshot()]
    assert seen == [
        ("generation.progress", 30, 503),
        ("generation.progress", 30, 200),
        ("generation.progress", 60, 200),
        ("generation.completed", None, 200),
    ]


def test_many_jobs_each_delivered_exactly_once(queues: QueueFactory, rx: Receiver) -> None:
    """Events and outcomes are handed over in batches: none lost, none sent twice."""
    n = 300
    q = open_queue(queues, rx, ManualClock(time.time()), max_concurrency=32)
    for i in range(n):
        submit(q, f"many-{i:03d}")
    stats = wait_stats(q, lambda s: s.sent == n and s.pending == 0, f"{n} sent")
    assert (stats.failed_attempts, stats.in_flight, stats.oldest_pending_age_s) == (0, 0, None)
    ids = [h.webhook_id for h in rx.snapshot()]
    assert len(ids) == n
    generations = (q.get(f"many-{i:03d}").generation_id for i in range(n))
    assert set(ids) == {delivery_id(g, TERMINAL_SEQ) for g in generations}


def test_a_client_id_reused_after_retention_gets_a_new_webhook_id_delivered_at_once(
    queues: QueueFactory, rx: Receiver
) -> None:
    """Retention deletes job X; X is submitted again: its event is a new message (a new
    webhook-id, so Standard Webhooks receivers do not drop it as a repeat) and it is sent
    at once, not after a restart."""
    # Two days ago, so that the second event's timestamp is now (standardwebhooks checks it).
    clock = ManualClock(time.time() - 2 * 86400)
    q = open_queue(queues, rx, clock, retention_days=1, retention_interval_s=3600)
    first, _ = q.submit({"prompt": "a cat surfing", "id": "order-1"})
    (hit1,) = rx.wait_count(1)
    wait_stats(q, lambda s: s.sent == 1, "the first event delivered")
    poll_until(lambda: q.status().completed == 1, "the queue to count the first job's end")
    clock.advance(2 * 86400)  # the retention pass removes the finished job

    poll_until(lambda: removed(q, "order-1"), "retention to remove order-1")
    second, _ = q.submit({"prompt": "a dog surfing", "id": "order-1"})
    hits = rx.wait_count(2)  # promptly: the clock does not move from here
    assert second.generation_id != first.generation_id
    p1 = json.loads(hit1.body)  # signed two days ago: too old for a receiver now
    p2 = Webhook(SECRET_A).verify(hits[1].body, hits[1].headers)
    assert p1["jobId"] == p2["jobId"] == "order-1"
    assert p1["generationId"] == first.generation_id and p2["generationId"] == second.generation_id
    assert hits[1].webhook_id != hit1.webhook_id
    assert hits[1].webhook_id == delivery_id(second.generation_id, TERMINAL_SEQ)
    wait_stats(q, lambda s: s.sent == 2 and s.pending == 0, "both events delivered")


async def local_video(job: Job, report: Any) -> JobResult:
    key = f"videos/{job.user_id}/{'ab' * 16}.mp4"  # as LocalStore names and marks it
    return JobResult(video_url=f"http://127.0.0.1:8787/{key}", video_key=key, private=True)


def test_a_local_video_url_is_signed_afresh_at_each_attempt(
    queues: QueueFactory, rx: Receiver
) -> None:
    clock = ManualClock(time.time())
    rx.status = 503
    q = queues.open(
        local_video,
        clock=clock,
        webhook_url=rx.url,
        webhook_secret=SECRET_A,
        webhook_retry_s="0,120",
        video_url_ttl_s=3600,
    )
    q.submit({"prompt": "a cat surfing", "id": "vid-1"}, user_id="u1")
    rx.wait_count(1)
    wait_stats(q, lambda s: s.failed_attempts == 1, "the first attempt failed")
    rx.status = 200
    clock.advance(120 * 1.11)
    hits = rx.wait_count(2)
    assert hits[0].webhook_id == hits[1].webhook_id  # a redelivery keeps its webhook-id
    urls = [
        urlsplit(Webhook(SECRET_A).verify(h.body, h.headers)["result"]["videoUrl"]) for h in hits
    ]
    assert urls[0].path == urls[1].path == f"/videos/u1/{'ab' * 16}.mp4"
    expiries = [int(parse_qs(u.query)["expires"][0]) for u in urls]
    assert expiries[1] - expiries[0] >= 120  # the retry's URL was signed when it was sent
    assert expiries[1] >= clock.now() + 3600 - 1
    read = q.get("vid-1").result  # a read signs afresh too
    assert read is not None
    for u in [*urls, urlsplit(read.video_url)]:
        query = parse_qs(u.query)
        assert q.video_url_valid(u.path, query["expires"][0], query["signature"][0])
