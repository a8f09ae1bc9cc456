"""JobQueue is the whole public API, and `genqueue.client.Client` offers the same over HTTP.

The behavioural cases run twice (parametrized): against an embedded JobQueue, and against
a Client talking to a real server on loopback (the same processor behind it). The client's
key is an admin's for the user "default", the user an embedded submit gets by default.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_queue import QueueFactory, Recorder, queue_factory, request
from helpers_server import KEY, http_server

from genqueue import (
    TERMINAL,
    IllegalTransition,
    InvalidRequest,
    Job,
    JobFailed,
    JobNotFound,
    ProviderError,
    QueueFull,
    Unauthorized,
)
from genqueue.client import AsyncClient, Client


class Opener:
    """Opens the API under test: an embedded JobQueue, or a Client of a server."""

    def __init__(self, kind: str, root: Path, queues: QueueFactory):
        self.kind, self.root, self.queues = kind, root, queues
        self._exits: list[Any] = []

    def open(self, processor: Any, **settings: Any) -> Any:
        if self.kind == "embedded":
            return self.queues.open(processor, **settings)
        server = http_server(self.root / "served", processor, **settings)
        url = server.__enter__()
        client = Client(url, KEY)
        self._exits += [lambda: server.__exit__(None, None, None), client.close]
        return client

    def close(self) -> None:
        while self._exits:
            self._exits.pop()()


@pytest.fixture(params=["embedded", "client"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    with queue_factory(tmp_path) as queues:
        opener = Opener(request.param, tmp_path, queues)
        try:
            yield opener
        finally:
            opener.close()


def test_submit_says_whether_it_created_the_job(api: Opener) -> None:
    q = api.open(Recorder())
    job, created = q.submit(request(id="mine"))
    again, created_again = q.submit(request(id="mine", prompt="another"))
    assert (created, created_again) == (True, False)
    assert again.id == job.id == "mine" and again.prompt == job.prompt
    with pytest.raises(InvalidRequest) as bad:
        q.submit(request(priority=11))
    assert bad.value.field == "priority"


def test_get_and_cancel(api: Opener) -> None:
    rec = Recorder(hold_all=True)
    q = api.open(rec, max_concurrency=1)
    q.submit(request(id="running"))
    rec.wait_running("running")
    q.submit(request(id="waiting"))
    assert q.get("waiting").status == "queued"
    assert q.cancel("waiting").status == "cancelled"
    with pytest.raises(IllegalTransition):
        q.cancel("waiting")
    with pytest.raises(JobNotFound):
        q.get("nobody")
    rec.release_all()
    assert q.wait("running", timeout_s=20).status == "completed"


def test_list_jobs_pages_newest_first_and_filters_by_status(api: Opener) -> None:
    rec = Recorder(hold_all=True)
    q = api.open(rec, max_concurrency=1)
    for i in range(5):
        q.submit(request(id=f"a-{i}"))
    first = q.list_jobs(limit=3)
    assert [j.id for j in first.items] == ["a-4", "a-3", "a-2"]
    assert first.next_cursor is not None
    rest = q.list_jobs(limit=3, cursor=first.next_cursor)
    assert [j.id for j in rest.items] == ["a-1", "a-0"] and rest.next_cursor is None
    rec.wait_running("a-0")
    assert [j.id for j in q.list_jobs(statuses={"processing"}).items] == ["a-0"]
    with pytest.raises(InvalidRequest) as bad:
        q.list_jobs(cursor="not-a-cursor")
    assert bad.value.field == "cursor"
    rec.release_all()


def test_wait_and_result_end_with_the_job(api: Opener) -> None:
    rec = Recorder()
    rec.script["bad"] = [ProviderError("refused", retryable=False, status=400)]
    q = api.open(rec)
    q.submit(request(id="good"))
    q.submit(request(id="bad"))
    assert q.result("good", timeout_s=20).video_url == "memory://good.mp4"
    ended = q.wait("bad", timeout_s=20)
    assert ended.status in TERMINAL and ended.status == "failed"
    with pytest.raises(JobFailed):
        q.result("bad", timeout_s=20)
    with pytest.raises(JobNotFound):
        q.wait("nobody", timeout_s=5)
    assert q.status().max_concurrency == 4  # (its counters follow the job's end, not with it)


def test_wait_times_out_on_a_job_that_does_not_end(api: Opener) -> None:
    rec = Recorder(hold_all=True)
    q = api.open(rec)
    q.submit(request(id="held"))
    rec.wait_running("held")
    with pytest.raises(TimeoutError):
        q.wait("held", timeout_s=0.05)
    rec.release_all()
    assert q.wait("held", timeout_s=20).status == "completed"


def test_subscribe_follows_each_job_to_its_end_and_unsubscribe_stops_it(api: Opener) -> None:
    rec = Recorder(hold_all=True)
    q = api.open(rec)
    seen: list[tuple[str, str]] = []
    changed = threading.Condition()

    def callback(job: Job) -> None:
        with changed:
            seen.append((job.id, job.status))
            changed.notify_all()

    def wait_seen(*wanted: tuple[str, str]) -> None:
        with changed:
            assert changed.wait_for(lambda: all(w in seen for w in wanted), 20), seen

    unsubscribe = q.subscribe(callback)
    q.submit(request(id="followed"))
    rec.wait_running("followed")
    wait_seen(("followed", "processing"))
    rec.release_all()
    wait_seen(("followed", "completed"))
    statuses = [status for job_id, status in seen if job_id == "followed"]
    assert statuses[-2:] == ["processing", "completed"]
    assert set(statuses) <= {"queued", "processing", "completed"}
    unsubscribe()
    q.submit(request(id="unheard"))
    assert q.wait("unheard", timeout_s=20).status == "completed"
    assert [s for job_id, s in seen if job_id == "unheard"] == []


def test_healthy_and_no_webhook_target_means_no_dead_letters(api: Opener) -> None:
    q = api.open(Recorder())
    assert q.healthy()
    assert q.webhooks.dead().deliveries == [] and q.webhooks.stats().sent == 0


# -- embedded only, or asyncio -------------------------------------------------------------


@pytest.fixture
def queues(tmp_path: Path) -> Iterator[QueueFactory]:
    with queue_factory(tmp_path) as factory:
        yield factory


def test_providers_list_what_a_submission_may_name(api: Opener) -> None:
    q = api.open(Recorder())
    listing = q.providers()
    by_name = {p.name: p for p in listing.providers}
    assert listing.default_provider == "veo3" and {"veo3", "fal"} <= set(by_name)
    fal_model = next(m.id for m in by_name["fal"].models if not m.default)
    job, _ = q.submit(request(id="on-fal", provider="fal", model=fal_model))
    assert (job.provider, job.model) == ("fal", fal_model)
    with pytest.raises(InvalidRequest) as bad:
        q.submit(request(provider="fal", model=by_name["veo3"].models[0].id))
    assert bad.value.field == "model"


def test_an_embedder_lists_one_users_jobs_or_everyones(queues: QueueFactory) -> None:
    q = queues.open(Recorder(hold_all=True), max_concurrency=1)
    q.submit(request(id="a-0"), user_id="alice")
    q.submit(request(id="b-0"), user_id="bob")
    q.submit(request(id="a-1"), user_id="alice")
    assert [j.id for j in q.list_jobs("alice").items] == ["a-1", "a-0"]
    assert [j.id for j in q.list_jobs().items] == ["a-1", "b-0", "a-0"]
    q.close()
    assert not q.healthy()


def test_the_async_twins_give_the_same_answers(queues: QueueFactory, tmp_path: Path) -> None:
    rec = Recorder()
    q = queues.open(rec)

    async def cases(api: Any) -> None:
        job, created = await api.asubmit(request(prompt="async"))
        assert created
        assert (await api.aget(job.id)).id == job.id
        assert job.id in [j.id for j in (await api.alist_jobs()).items]
        assert (await api.aresult(job.id, timeout_s=20)).video_url == f"memory://{job.id}.mp4"
        assert (await api.await_job(job.id)).status == "completed"
        assert await api.ahealthy()
        assert (await api.astatus()).max_concurrency == 4
        assert (await api.webhooks.astats()).sent == 0
        assert (await api.webhooks.adead()).deliveries == []
        ended = threading.Event()  # the embedded queue calls back on its own thread
        unsubscribe = await api.asubscribe(lambda job: job.terminal and ended.set())
        await api.asubmit(request(prompt="followed"))
        assert await asyncio.to_thread(ended.wait, 20)
        unsubscribe()

    async def remote(url: str) -> None:
        async with AsyncClient(url, KEY) as client:
            await cases(client)

    asyncio.run(asyncio.wait_for(cases(q), 30))
    with http_server(tmp_path / "served", rec) as url:
        asyncio.run(asyncio.wait_for(remote(url), 30))


def test_asubmit_from_two_event_loops_at_once(queues: QueueFactory) -> None:
    """Each loop's submissions are batched, sent and answered on that loop: a caller on a
    second loop (a thread running its own `asyncio.run`) is woken too, never left hanging."""
    q = queues.open(Recorder(), max_concurrency=64)
    n = 200
    done = {"a": 0, "b": 0}

    def caller(name: str) -> None:
        async def main() -> None:
            for i in range(n):
                job, created = await q.asubmit(request(id=f"{name}-{i}"))
                assert created and job.id == f"{name}-{i}"
                done[name] += 1

        asyncio.run(main())

    threads = [threading.Thread(target=caller, args=(name,), daemon=True) for name in done]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert done == {"a": n, "b": n}, f"asubmit hung on a loop: {done}"


@pytest.mark.parametrize("user_id", ["a/b", "*", "", ".hidden", "x" * 129])
def test_an_embedder_cannot_submit_or_list_as_a_user_that_is_not_a_name(
    queues: QueueFactory, user_id: str
) -> None:
    """A user id is the job index's key prefix and a folder name: "a/b" would be listed
    inside "a"'s jobs and "*" is everyone's. Refused before anything is stored."""
    q = queues.open(Recorder(hold_all=True), max_concurrency=1)
    q.submit(request(id="alices"), user_id="alice")
    with pytest.raises(InvalidRequest) as refused:
        q.submit(request(id="theirs"), user_id=user_id)
    assert refused.value.field == "user_id"
    with pytest.raises(InvalidRequest):
        q.list_jobs(user_id)
    with pytest.raises(JobNotFound):
        q.get("theirs")
    assert [job.id for job in q.list_jobs("alice").items] == ["alices"]
    assert [job.id for job in q.list_jobs().items] == ["alices"]


def test_the_async_reads_never_read_storage_on_the_event_loop(
    queues: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored record may come from SQLite (after a restart, an old job, an unknown id),
    waiting on the worker that also commits: `aget`/`acancel` read it off the loop."""
    from genqueue.actors.job import JobActor

    q = queues.open(Recorder(hold_all=True), max_concurrency=1)
    q.submit(request(id="held"))
    read_on: list[str] = []
    real = JobActor.read

    def spy(system: Any, job_id: str) -> Any:
        read_on.append(threading.current_thread().name)
        return real(system, job_id)

    monkeypatch.setattr(JobActor, "read", staticmethod(spy))

    async def reads() -> None:
        threading.current_thread().name = "the-event-loop"
        assert (await q.aget("held")).id == "held"
        with pytest.raises(JobNotFound):
            await q.aget("no-such-job")
        with pytest.raises(JobNotFound):
            await q.acancel("no-such-job")

    caller = threading.current_thread().name
    try:
        asyncio.run(reads())
    finally:
        threading.current_thread().name = caller
    assert len(read_on) == 3 and "the-event-loop" not in read_on, read_on


def test_a_full_queue_raises_queue_full_both_ways(api: Opener) -> None:
    """`except QueueFull:` works the same embedded and remote (429 queue_full)."""
    rec = Recorder(hold_all=True)
    q = api.open(rec, max_concurrency=1, max_queued=1)
    q.submit(request(id="running"))
    rec.wait_running("running")
    q.submit(request(id="waiting"))
    with pytest.raises(QueueFull) as refused:
        q.submit(request(id="one-too-many"))
    assert "queue" in refused.value.message
    rec.release_all()


def test_a_wait_beyond_the_key_s_stream_cap_still_ends_with_the_job(tmp_path: Path) -> None:
    """The server caps a key's event streams (GENQUEUE_MAX_STREAMS_PER_KEY); a client
    waiting on more jobs than that reads the others' records instead, and still waits."""
    rec = Recorder(hold_all=True)
    with http_server(tmp_path / "served", rec, max_streams_per_key=2) as url:

        async def main() -> list[Job]:
            async with AsyncClient(url, KEY) as client:
                ids = [(await client.asubmit(request(id=f"w-{i}"))).job.id for i in range(3)]
                waits = [asyncio.ensure_future(client.await_job(i, timeout_s=30)) for i in ids]
                await asyncio.to_thread(rec.wait_running, *ids)
                rec.release_all()
                return list(await asyncio.gather(*waits))

        jobs = asyncio.run(main())
    assert [(job.id, job.status) for job in jobs] == [(f"w-{i}", "completed") for i in range(3)]


def test_an_admin_client_lists_one_users_jobs_as_an_embedder_does(tmp_path: Path) -> None:
    keys = "k-admin=default:admin,k-alice=alice,k-bob=bob"
    with queue_factory(tmp_path) as queues:
        q = queues.open(Recorder(hold_all=True), max_concurrency=1)
        for i in range(2):
            q.submit(request(id=f"alice-{i}"), user_id="alice")
        for i in range(3):
            q.submit(request(id=f"bob-{i}"), user_id="bob")
        embedded = q.list_jobs("alice", limit=2)
    with http_server(tmp_path / "served", Recorder(hold_all=True), api_keys=keys) as url:
        with Client(url, "k-alice") as alice, Client(url, "k-bob") as bob:
            for i in range(2):
                alice.submit(request(id=f"alice-{i}"))
            for i in range(3):
                bob.submit(request(id=f"bob-{i}"))
            with pytest.raises(Unauthorized) as refused:
                bob.list_jobs("alice")
            assert refused.value.status == 403
            assert [job.id for job in bob.list_jobs("bob", limit=1).items] == ["bob-2"]
        with Client(url, "k-admin") as admin:
            remote = admin.list_jobs("alice", limit=2)
            assert admin.list_jobs(statuses=[]).items == []
    assert [job.id for job in embedded.items] == ["alice-1", "alice-0"]
    assert [job.id for job in remote.items] == ["alice-1", "alice-0"]


def test_a_client_escapes_job_ids_in_its_paths(tmp_path: Path) -> None:
    """An id is one path segment: "x/../y" names no job, never the job "y"."""
    rec = Recorder(hold_all=True)
    with http_server(tmp_path / "served", rec) as url, Client(url, KEY) as client:
        client.submit(request(id="y"))
        with pytest.raises(JobNotFound):
            client.cancel("x/../y")
        with pytest.raises(JobNotFound):
            client.get("y/events")
        assert client.get("y").status in ("queued", "processing")
        rec.release_all()


def test_the_cli_reports_a_refusal_as_a_usage_error(tmp_path: Path) -> None:
    """Every 4xx but 401 exits 2 (EXIT_USAGE) naming the status; 401 exits 4."""
    rec = Recorder(hold_all=True)
    with http_server(tmp_path / "served", rec, max_concurrency=1, max_queued=1) as url:
        env = {**os.environ, "GENQUEUE_URL": url, "GENQUEUE_KEY": KEY}

        def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "main.py", *args],
                cwd=Path(__file__).resolve().parent.parent,
                env={**env, **extra},
                capture_output=True,
                text=True,
                timeout=60,
            )

        codes = [cli("submit", f"prompt {i}").returncode for i in range(2)]
        full = cli("submit", "one too many")
        bad_key = cli("status", GENQUEUE_KEY="k-nobody")
        rec.release_all()
    assert codes == [0, 0]
    assert full.returncode == 2 and "error 429" in full.stderr, full.stderr
    assert bad_key.returncode == 4, bad_key.stderr
