"""`Client.subscribe` / `AsyncClient.asubscribe`: JobQueue.subscribe over `GET /api/events`.

Against a real server on loopback (helpers_server.py): each job's changes arrive in
order up to its end, unsubscribing stops them, a raising callback is logged and later
changes still arrive, a key at its stream cap gets StreamsFull at once, and a server
restarted on the same port and data directory is followed again. What a reopened stream
delivers of the changes made while it was down is pinned on scripted streams at the end.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import msgspec
import pytest
from conftest import WAIT_S, eventually, run
from helpers_jobs import a_job
from helpers_queue import Recorder, request
from helpers_server import KEY, http_server

from genqueue import (
    GenqueueError,
    Job,
    JobNotFound,
    Unauthorized,
    Unreachable,
)
from genqueue.client import AsyncClient, Client, StreamsFull, Subscription
from genqueue.client.feed import RECONNECT
from genqueue.retry import RetryPolicy
from genqueue.wire import encode, public_job


class Seen:
    """What a subscriber was called with, for tests to wait on."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.jobs: list[Job] = []

    def __call__(self, job: Job) -> None:
        with self.cv:
            self.jobs.append(job)
            self.cv.notify_all()

    def statuses(self, job_id: str) -> list[str]:
        with self.cv:
            return [j.status for j in self.jobs if j.id == job_id]

    def wait_for(self, job_id: str, status: str, timeout_s: float = WAIT_S) -> None:
        with self.cv:
            ok = self.cv.wait_for(lambda: status in self.statuses(job_id), timeout_s)
            assert ok, f"{job_id} never reached {status}: saw {self.statuses(job_id)}"


def in_order(statuses: list[str], *path: str) -> bool:
    """`statuses` is `path`'s end with an optional prefix skipped (changes the server
    coalesced), each state once."""
    return any(statuses == list(path[i:]) for i in range(len(path)))


def test_a_subscriber_sees_each_job_s_changes_in_order_to_its_end(tmp_path: Path) -> None:
    rec = Recorder(hold_all=True)
    seen = Seen()
    with (
        http_server(tmp_path / "served", rec, max_concurrency=2) as url,
        Client(url, KEY) as client,
    ):
        client.subscribe(seen)
        ids = [client.submit(request(id=f"j-{i}")).job.id for i in range(3)]
        rec.wait_running("j-0", "j-1")
        for job_id in ("j-0", "j-1"):
            seen.wait_for(job_id, "processing")
        client.cancel("j-2")  # still queued: one slot each is taken
        rec.release_all()
        for job_id, end in [("j-0", "completed"), ("j-1", "completed"), ("j-2", "cancelled")]:
            seen.wait_for(job_id, end)
    assert in_order(seen.statuses("j-0"), "queued", "processing", "completed")
    assert in_order(seen.statuses("j-1"), "queued", "processing", "completed")
    assert in_order(seen.statuses("j-2"), "queued", "cancelled")
    for job_id in ids:
        times = [j.updated_at for j in seen.jobs if j.id == job_id]
        assert times == sorted(times)
    done = next(j for j in seen.jobs if j.id == "j-0" and j.terminal)
    assert done.result is not None and done.result.video_url == "memory://j-0.mp4"


def test_unsubscribing_stops_deliveries_and_lets_the_stream_go(tmp_path: Path) -> None:
    rec = Recorder()
    kept, dropped = Seen(), Seen()
    with (
        http_server(tmp_path / "served", rec, max_streams_per_key=2) as url,
        Client(url, KEY) as client,
    ):
        unsubscribe = client.subscribe(dropped)
        client.subscribe(kept)
        client.submit(request(id="before"))
        kept.wait_for("before", "completed")
        dropped.wait_for("before", "completed")
        unsubscribe()
        unsubscribe()  # again: nothing
        client.submit(request(id="after"))
        kept.wait_for("after", "completed")
        # the server let the stream go: the key may open one more
        eventually(lambda: _opens(client), "the unsubscribed stream's release")
    assert dropped.statuses("after") == []


def _opens(client: Client) -> bool:
    try:
        client.subscribe(lambda job: None)
    except StreamsFull:
        return False
    return True


def test_a_key_at_its_stream_cap_gets_streams_full_from_subscribe(tmp_path: Path) -> None:
    with (
        http_server(tmp_path / "served", Recorder(), max_streams_per_key=1) as url,
        Client(url, KEY) as client,
    ):
        client.subscribe(lambda job: None)
        with pytest.raises(StreamsFull) as refused:
            client.subscribe(lambda job: None)
        assert refused.value.status == 429
        assert "GENQUEUE_MAX_STREAMS_PER_KEY" in str(refused.value)

        async def second() -> None:
            async with AsyncClient(url, KEY) as aclient:
                await aclient.asubscribe(lambda job: None)

        with pytest.raises(StreamsFull):
            run(second(), timeout_s=WAIT_S)


def test_a_refused_key_gets_unauthorized_from_subscribe(tmp_path: Path) -> None:
    with (
        http_server(tmp_path / "served", Recorder()) as url,
        Client(url, "k-wrong") as client,
        pytest.raises(Unauthorized),
    ):
        client.subscribe(lambda job: None)


def test_a_raising_callback_is_logged_and_later_changes_still_arrive(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen = Seen()

    def fragile(job: Job) -> None:
        seen(job)
        if job.id == "first":
            raise RuntimeError("a subscriber's bug")

    with (
        http_server(tmp_path / "served", Recorder()) as url,
        Client(url, KEY) as client,
        caplog.at_level(logging.ERROR, logger="genqueue.client"),
    ):
        client.subscribe(fragile)
        client.submit(request(id="first"))
        seen.wait_for("first", "completed")
        client.submit(request(id="second"))
        seen.wait_for("second", "completed")
    assert in_order(seen.statuses("second"), "queued", "processing", "completed")
    failures = [r for r in caplog.records if r.getMessage() == "job event subscriber failed"]
    assert failures and all(r.exc_info is not None for r in failures)


def test_a_callback_may_call_the_client_and_unsubscribe_itself(tmp_path: Path) -> None:
    """Callbacks run on a thread of their own, not the client's loop: calling the client
    from one does not deadlock, nor does unsubscribing from inside it."""
    read: list[Job] = []
    done = threading.Event()
    with (
        http_server(tmp_path / "served", Recorder()) as url,
        Client(url, KEY) as client,
    ):

        def callback(job: Job) -> None:
            if job.terminal:
                read.append(client.get(job.id))
                unsubscribe()
                done.set()

        unsubscribe = client.subscribe(callback)
        client.submit(request(id="calls-back"))
        assert done.wait(WAIT_S)
        client.submit(request(id="unheard"))
        assert client.wait("unheard", timeout_s=WAIT_S).status == "completed"
    assert [(j.id, j.status) for j in read] == [("calls-back", "completed")]


def test_the_async_client_delivers_on_its_loop(tmp_path: Path) -> None:
    rec = Recorder()

    async def main(url: str) -> list[str]:
        ended = asyncio.Event()
        statuses: list[str] = []

        def callback(job: Job) -> None:
            statuses.append(job.status)
            if job.terminal:
                ended.set()

        async with AsyncClient(url, KEY) as client:
            unsubscribe = await client.asubscribe(callback)
            await client.asubmit(request(id="async"))
            await asyncio.wait_for(ended.wait(), WAIT_S)
            unsubscribe()
            assert unsubscribe.closed
        return statuses

    with http_server(tmp_path / "served", rec) as url:
        statuses = run(main(url))
    assert in_order(statuses, "queued", "processing", "completed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_a_restarted_server_is_followed_again(tmp_path: Path) -> None:
    """The server stops with a job running and starts again on the same port and data
    directory: the job resumes and its end arrives, as do a new job's changes."""
    data, port = tmp_path / "served", _free_port()
    seen = Seen()
    fast = RetryPolicy(initial_interval_s=0.05, maximum_interval_s=0.5, maximum_attempts=1000)
    held = Recorder(hold_all=True)
    with Client(f"http://127.0.0.1:{port}", KEY) as client:
        with http_server(data, held, port=port):
            client.subscribe(seen, retry=fast)
            client.submit(request(id="across"))
            seen.wait_for("across", "processing")
        with http_server(data, Recorder(), port=port):
            seen.wait_for("across", "completed")
            client.submit(request(id="later"))
            seen.wait_for("later", "completed")
    assert seen.statuses("across")[-1] == "completed"
    assert in_order(seen.statuses("later"), "queued", "processing", "completed")


# -- what a reopened stream delivers (scripted streams, no server) ---------------------------


def _job(job_id: str, status: str, updated_at: float, created_at: float = 1.0) -> Job:
    return a_job(
        id=job_id,
        generation_id="",
        user_id="default",
        provider="veo",
        created_at=created_at,
        updated_at=updated_at,
        status=status,
    )


def _snapshot(*jobs: Job) -> tuple[str, bytes]:
    body = {"queue": {}, "jobs": [msgspec.to_builtins(public_job(j)) for j in jobs]}
    return "snapshot", msgspec.json.encode(body)


def _change(job: Job) -> tuple[str, bytes]:
    return "job", encode(public_job(job))


class Script:
    """Streams played one after another; the subscription is waited on after each."""

    def __init__(self, *streams: list[tuple[str, bytes]]):
        self.streams = list(streams)
        self.played = asyncio.Event()
        self.stored: dict[str, Job] = {}  # what a read of a job answers

    async def events(self) -> AsyncGenerator[tuple[str, bytes], None]:
        if not self.streams:
            self.played.set()
            await asyncio.Event().wait()  # the last stream stays open
        for event in self.streams.pop(0):
            yield event

    async def read(self, job_id: str) -> Job:
        if job_id not in self.stored:
            raise JobNotFound(job_id)
        return self.stored[job_id]


def _play(script: Script) -> list[tuple[str, str]]:
    got: list[tuple[str, str]] = []

    async def main() -> None:
        retry = RetryPolicy(initial_interval_s=0.0, maximum_attempts=10)
        sub = Subscription(
            script.events, script.read, lambda j: got.append((j.id, j.status)), retry
        )
        await sub.start()
        await asyncio.wait_for(script.played.wait(), WAIT_S)
        await sub.aclose()

    run(main())
    return got


def test_a_reopened_stream_delivers_what_changed_while_it_was_down() -> None:
    seen_queued, gone = _job("seen", "queued", 10.0), _job("gone", "queued", 10.0)
    old = _job("old", "completed", 5.0)
    script = Script(
        [_snapshot(seen_queued, old, gone), _change(_job("live", "processing", 11.0))],
        [
            _snapshot(
                _job("seen", "processing", 12.0),  # changed meanwhile: delivered
                old,  # ended before: not again
                _job("new", "queued", 13.0),  # unseen, changed after the last seen: delivered
                _job("older", "completed", 9.0),  # unseen, not changed since: not delivered
            ),
            _change(_job("seen", "queued", 10.0)),  # stale: not delivered
            _change(_job("seen", "completed", 14.0)),
        ],
    )
    script.stored = {"live": _job("live", "completed", 12.5)}  # "gone": removed meanwhile
    got = _play(script)
    assert got == [
        ("live", "processing"),
        ("seen", "processing"),
        ("new", "queued"),
        ("live", "completed"),  # not in the snapshot, seen live: read
        ("seen", "completed"),
    ]


def test_a_key_refused_on_reopening_ends_the_subscription_with_a_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def refused() -> AsyncGenerator[tuple[str, bytes], None]:
        raise Unauthorized("the API key was refused")
        yield  # an async generator

    with caplog.at_level(logging.ERROR, logger="genqueue.client"):
        sub = run(_ends_after_one_stream(refused, RECONNECT))
    assert sub.closed
    assert [r.getMessage() for r in caplog.records] == [
        "job subscription ended: the API key was refused"
    ]


def test_a_subscription_gives_up_after_its_policy_s_reopens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tries: list[int] = []

    async def unreachable() -> AsyncGenerator[tuple[str, bytes], None]:
        tries.append(1)
        raise Unreachable("cannot reach genqueue")
        yield  # an async generator

    retry = RetryPolicy(initial_interval_s=0.0, maximum_attempts=3)
    with caplog.at_level(logging.ERROR, logger="genqueue.client"):
        sub = run(_ends_after_one_stream(unreachable, retry))
    assert sub.closed
    assert len(tries) == 2  # the first stream's end was the first failure
    assert [r.getMessage() for r in caplog.records] == [
        "job subscription ended: the stream failed 3 times in a row (last: cannot reach genqueue)"
    ]


async def _ends_after_one_stream(
    then: Callable[[], AsyncGenerator[tuple[str, bytes], None]], retry: RetryPolicy
) -> Subscription:
    """A subscription whose first stream opens and ends, and every later one is `then`."""
    opened = Script([_snapshot()])
    calls = iter([opened.events])

    def events() -> AsyncGenerator[tuple[str, bytes], None]:
        return next(calls, then)()

    sub = Subscription(events, opened.read, lambda job: None, retry)
    await sub.start()
    await asyncio.wait_for(_ended(sub), WAIT_S)
    return sub


async def _ended(sub: Subscription) -> None:
    ended = asyncio.Event()
    sub.on_close(lambda _: ended.set())
    await ended.wait()


def test_a_stream_that_does_not_begin_with_a_snapshot_is_refused() -> None:
    async def main() -> None:
        wrong = Script([_change(_job("x", "queued", 1.0))])
        sub = Subscription(wrong.events, wrong.read, lambda job: None, RECONNECT)
        await sub.start()

    with pytest.raises(GenqueueError, match="not a snapshot"):
        run(main())


def test_a_raising_callback_on_the_loop_does_not_end_the_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    got: list[str] = []

    def fragile(job: Job) -> None:
        got.append(job.status)
        if job.status == "queued":
            raise RuntimeError("a subscriber's bug")

    async def main() -> None:
        script = Script(
            [_snapshot(), _change(_job("a", "queued", 2.0)), _change(_job("a", "failed", 3.0))]
        )
        sub = Subscription(script.events, script.read, fragile, RECONNECT)
        await sub.start()
        await asyncio.wait_for(script.played.wait(), WAIT_S)
        await sub.aclose()

    with caplog.at_level(logging.ERROR, logger="genqueue.client"):
        run(main())
    assert got == ["queued", "failed"]
    assert [r.getMessage() for r in caplog.records] == ["job event subscriber failed"]


def test_a_stream_that_ends_before_its_snapshot_is_refused_by_subscribe() -> None:
    async def main() -> None:
        empty = Script([])
        sub = Subscription(empty.events, empty.read, lambda job: None, RECONNECT)
        await sub.start()

    with pytest.raises(GenqueueError, match="ended at once"):
        run(main(), timeout_s=WAIT_S)
