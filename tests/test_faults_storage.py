"""The data directory refusing writes: the API refuses new jobs with 503 and loses none it
acknowledged (issue 7, "Fault suite").

Two ways to make SQLite refuse a write, each test running with both:
- `disk_full`: the data directory is a 4 MB tmpfs, filled up with a file; SQLite then gets
  ENOSPC from the kernel, exactly as on a full disk. Mounting needs root (chmod does not stop
  root, so a real mount is the only honest way): without it these cases are skipped.
- `page_cap`: `PRAGMA max_page_count` on the store's own connection, so SQLite answers
  SQLITE_FULL ("database or disk is full") as it does on a full disk; runs everywhere.
A real full disk fails inside `conn.commit()`, which ends sqlitedict's worker thread (its
connection closed: `sqlite_closed` checks it); the cap fails inside a statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_http import Instant, assert_error, run, serve

from genqueue.actors.runtime import DurableActor
from genqueue.actors.system import ActorSystem
from genqueue.errors import StorageError
from genqueue.http import QUEUE
from genqueue.storage.state import StateStore

FAULTS = ["disk_full", "page_cap"]
ANSWER_S = 5.0  # every request must answer within this, fault or not
BIG_PROMPT = "a cat surfing a wave " * 190  # ~4,000 characters: the disk fills quicker
pytestmark = pytest.mark.usefixtures("sqlite_closed")


@contextlib.contextmanager
def data_dir(path: Path, fault: str) -> Iterator[Path]:
    """`path` created; for `disk_full`, a fresh 4 MB tmpfs mounted there (unmounted after)."""
    path.mkdir(parents=True, exist_ok=True)
    if fault != "disk_full":
        yield path
        return
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    cmd = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def break_storage(fault: str, data: Path, store: StateStore) -> None:
    """Make every later write to the store's file fail the way a full disk does."""
    if fault == "disk_full":
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError), (data / "filler").open("wb", buffering=0) as f:
            while True:  # until ENOSPC
                f.write(chunk)
        assert os.statvfs(data).f_bavail == 0
        return
    pages = store._conn.select_one("PRAGMA page_count")[0]
    assert store._conn.select_one(f"PRAGMA max_page_count={pages}")[0] == pages


def mend_storage(fault: str, data: Path) -> None:
    """Space again (the page cap is per connection: a reopened store has none)."""
    if fault == "disk_full":
        (data / "filler").unlink()


async def post(api: Any, job_id: str) -> tuple[int, Any]:
    """Submit a job with a client-chosen id; (status, reply), answered within ANSWER_S."""
    body = {"id": job_id, "prompt": BIG_PROMPT}
    timeout = aiohttp.ClientTimeout(total=ANSWER_S)
    status, reply, _ = await api.call("POST", "/api/generations", json=body, timeout=timeout)
    return status, reply


class Hold:
    """Starts jobs and never finishes them: acknowledged jobs are queued or running."""

    async def __call__(self, job: Any, report: Any) -> Any:
        await asyncio.Event().wait()


# -- through a real server ---------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS)
def test_full_disk_refuses_new_jobs_with_503_and_loses_none_acknowledged(
    tmp_path: Path, fault: str
) -> None:
    acked: list[str] = []
    refused: list[str] = []
    timeout = aiohttp.ClientTimeout(total=ANSWER_S)

    async def during_the_fault(data: Path) -> None:
        async with serve(tmp_path, Hold()) as api:
            for i in range(6):
                status, reply = await post(api, f"before-{i}")
                assert status == 202, reply
                acked.append(f"before-{i}")
            break_storage(fault, data, api.app[QUEUE].store)
            # A fuller WAL or freed pages may take a few more jobs: each is acknowledged
            # (202, durable) or refused (503), and once refused, always refused.
            for i in range(300):
                status, reply = await post(api, f"late-{i}")
                if status == 202:
                    assert not refused, "a job was acknowledged after the store failed"
                    acked.append(f"late-{i}")
                    continue
                err = assert_error(status, reply, 503, "storage_unavailable")
                assert "state store" in err["message"], err
                refused.append(f"late-{i}")
                if len(refused) == 5:
                    break
            assert len(refused) == 5, f"no 503 after {len(acked)} acknowledged jobs"
            # Reads answer quickly: the job, or a clean 503; never a 500 or a hang.
            for job_id in acked:
                status, reply, _ = await api.call(
                    "GET", f"/api/generations/{job_id}", timeout=timeout
                )
                if status == 200:
                    assert reply["id"] == job_id
                else:
                    assert_error(status, reply, 503, "storage_unavailable")
            for path in ("/api/generations?limit=100", "/api/queue/status"):
                status, reply, _ = await api.call("GET", path, timeout=timeout)
                if status != 200:
                    assert_error(status, reply, 503, "storage_unavailable")
            status, reply, _ = await api.call("GET", "/healthz", user=None, timeout=timeout)
            assert_error(status, reply, 503, "storage_unavailable")

    async def after_a_restart() -> None:
        async with serve(tmp_path, Instant()) as api:
            for job_id in refused:  # nothing of a refused job was kept
                status, reply, _ = await api.call("GET", f"/api/generations/{job_id}")
                assert_error(status, reply, 404)
            listed: set[str] = set()
            cursor = ""
            while True:
                status, page, _ = await api.call("GET", f"/api/generations?limit=100{cursor}")
                assert status == 200, page
                listed |= {job["id"] for job in page["items"]}
                if page["nextCursor"] is None:
                    break
                cursor = f"&cursor={page['nextCursor']}"
            assert listed == set(acked)
            for job_id in acked:
                job = await api.wait_done(job_id)
                assert job["status"] == "completed", job

    with data_dir(tmp_path / "data", fault) as data:
        started = time.monotonic()
        run(during_the_fault(data), timeout_s=20)
        assert time.monotonic() - started < 15  # no commit waited out its 120 s timeout
        mend_storage(fault, data)
        run(after_a_restart(), timeout_s=20)


# -- the state store itself ------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS)
def test_a_refused_commit_fails_flush_and_callbacks_promptly_and_keeps_no_half_turn(
    tmp_path: Path, fault: str
) -> None:
    with data_dir(tmp_path / "data", fault) as data:
        store = StateStore(data / "state.db", synchronous="NORMAL")
        try:
            jobs, index = store.namespace("jobs"), store.namespace("index")
            for i in range(20):
                jobs.put(f"old-{i}", {"n": i})
            store.flush()
            break_storage(fault, data, store)

            store.begin_turn()  # one turn across two tables; the second needs new pages
            jobs.put("new", {"n": -1})
            index.put("new", os.urandom(1_000_000))
            seq = store.end_turn()
            outcome: list[BaseException | None] = []
            called = threading.Event()

            def callback() -> None:
                outcome.append(store.failure)
                called.set()

            store.after_commit(seq, callback)
            started = time.monotonic()
            with pytest.raises(StorageError):
                store.flush(timeout_s=60)
            assert time.monotonic() - started < 5, "flush waited for a timeout"
            assert called.wait(5) and outcome[0] is not None  # the gate reports the failure
            assert store.failure is not None
            with pytest.raises(StorageError):  # and it stays failed: later writes refused
                jobs.put("later", {"n": 0})
            with pytest.raises(StorageError):
                store.flush()
            later: list[BaseException | None] = []
            store.after_commit(store.write_seq, lambda: later.append(store.failure))
            assert later and later[0] is not None
        finally:
            store.close()

        mend_storage(fault, data)
        store = StateStore(data / "state.db")
        try:
            jobs, index = store.namespace("jobs"), store.namespace("index")
            assert [k for k, _ in jobs.list("old-")] == sorted(f"old-{i}" for i in range(20))
            assert jobs.get("new") is None and index.get("new") is None  # no half turn
            jobs.put("again", {"n": 1})
            store.flush()  # writes work again
        finally:
            store.close()


@pytest.mark.parametrize("fault", FAULTS)
def test_the_server_reopens_by_itself_once_the_disk_takes_writes_again(
    tmp_path: Path, fault: str
) -> None:
    timeout = aiohttp.ClientTimeout(total=ANSWER_S)

    async def scenario(data: Path) -> None:
        acked: list[str] = []
        async with serve(tmp_path, Hold(), store_retry_s=0.05, max_concurrency=2) as api:
            for i in range(4):
                assert (await post(api, f"before-{i}"))[0] == 202
                acked.append(f"before-{i}")
            break_storage(fault, data, api.app[QUEUE].store)
            for i in range(300):
                status, reply = await post(api, f"late-{i}")
                if status == 503:
                    break
                acked.append(f"late-{i}")
            else:
                raise AssertionError("the store never refused a write")
            mend_storage(fault, data)
            # No restart: the server finds the disk writable and reopens the queue from it.
            deadline = time.monotonic() + 10
            while (await post(api, "after"))[0] != 202:
                assert time.monotonic() < deadline, "the server did not recover in 10 s"
                await asyncio.sleep(0.05)
            status, reply, _ = await api.call("GET", "/healthz", user=None, timeout=timeout)
            assert status == 200, reply
            for job_id in [*acked, "after"]:
                status, job, _ = await api.call("GET", f"/api/generations/{job_id}")
                assert status == 200 and job["status"] in ("queued", "processing"), job
            status, page, _ = await api.call("GET", "/api/queue/status")
            assert status == 200 and page["queued"] + page["inFlight"] == len(acked) + 1, page

    with data_dir(tmp_path / "data", fault) as data:
        run(scenario(data), timeout_s=40)


@pytest.mark.parametrize("drain", [True, False])
def test_a_write_error_met_first_by_a_reader_still_fails_the_commit(
    tmp_path: Path, drain: bool
) -> None:
    """sqlitedict hands its worker's last error to whichever thread calls it next: a reader
    that meets a commit's write error must not let that commit go through as durable."""
    for trial in range(10):
        store = StateStore(tmp_path / f"t{trial}" / "state.db", synchronous="NORMAL")
        a, b, c = store.namespace("a"), store.namespace("b"), store.namespace("c")
        c.put("x", 1)
        store.flush()
        pages = store._conn.select_one("PRAGMA page_count")[0]
        store._conn.execute(f"PRAGMA max_page_count={pages + 3}")
        stop = threading.Event()

        def reader(store: StateStore = store, c: Any = c, stop: Any = stop) -> None:
            while not stop.is_set() and store.failure is None:
                with contextlib.suppress(StorageError):
                    if drain:
                        c.list("")
                    else:
                        store._select('SELECT value FROM "c" WHERE key = ?', ("x",))

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            store.begin_turn()
            a.put("k", "small")
            b.put("k", b"\0" * 200_000)  # needs far more than 3 pages: SQLITE_FULL
            seq = store.end_turn()
            with pytest.raises(StorageError):
                store.flush(seq, timeout_s=10)
        finally:
            stop.set()
            thread.join(timeout=10)
            store.close()
        reopened = StateStore(tmp_path / f"t{trial}" / "state.db")
        try:  # nothing of the turn was committed, though a reader may have met its error
            assert reopened.namespace("a").get("k") is None
            assert reopened.namespace("b").get("k") is None
        finally:
            reopened.close()


def test_a_turn_committed_before_a_later_commit_failed_is_answered_as_stored(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path / "state.db", synchronous="NORMAL")
    system = ActorSystem(store)
    system.register(Keeper)
    system.start()
    store.namespace("big")
    store.flush()
    answers: dict[str, Any] = {}

    def ask(key: str, message: str) -> None:
        try:
            answers[message] = system.ask(Keeper, key, message, timeout_s=10)
        except Exception as exc:
            answers[message] = exc

    try:
        slow = threading.Thread(target=ask, args=("k1", "slow"))
        slow.start()
        assert Keeper.releasing.wait(10), answers  # the releaser is busy in k1's callback
        ask_thread = threading.Thread(target=ask, args=("k2", "hello"))
        ask_thread.start()
        keeper = store.namespace("keeper")
        # k2's turn queued its write (visible), and every queued write is committed.
        poll(lambda: keeper.get("k2/v") == "hello" and store.durable_seq >= store.write_seq)
        pages = store._conn.select_one("PRAGMA page_count")[0]
        store._conn.execute(f"PRAGMA max_page_count={pages + 2}")
        store.namespace("big").put("x", b"\0" * 300_000)  # the next commit fails
        poll(lambda: store.failure is not None)
        Keeper.release.set()
        slow.join(10)
        ask_thread.join(10)
    finally:
        Keeper.release.set()
        system.stop()
        store.close()
    assert answers == {"slow": "stored", "hello": "stored"}  # both were committed


class Keeper(DurableActor):
    kind = "keeper"
    releasing = threading.Event()
    release = threading.Event()

    def receive(self, message: Any) -> Any:
        self.storage.put("v", message)
        if message == "slow":  # holds the releaser until the test lets it go
            self.after_commit(lambda: (Keeper.releasing.set(), Keeper.release.wait(10)))
        return "stored"


def poll(check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_after_the_store_failed_every_request_gets_an_answer(tmp_path: Path) -> None:
    """Submissions without a client id, cancels and status all answer (an error) at once:
    a turn that cannot store anything fails like any failed turn, it never goes silent."""

    async def scenario() -> None:
        async with serve(tmp_path, Hold()) as api:
            status, job, _ = await api.call("POST", "/api/generations", json={"prompt": "a"})
            assert status == 202, job
            queue = api.app[QUEUE]
            break_storage("page_cap", tmp_path / "data", queue.store)
            timeout = aiohttp.ClientTimeout(total=ANSWER_S)
            for _ in range(50):  # until the store has failed
                body = {"prompt": BIG_PROMPT}  # no id: the queue writes a new record
                status, reply, _ = await api.call(
                    "POST", "/api/generations", json=body, timeout=timeout
                )
                if status == 503:
                    break
            assert queue.store.failure is not None
            for method, path in [
                ("POST", "/api/generations"),
                ("DELETE", f"/api/generations/{job['id']}"),
                ("GET", "/api/queue/status"),
                ("GET", f"/api/generations/{job['id']}"),
            ]:
                kwargs = {"json": {"prompt": "b"}} if method == "POST" else {}
                status, reply, _ = await api.call(method, path, timeout=timeout, **kwargs)
                assert status in (200, 503), (method, path, status, reply)

    run(scenario(), timeout_s=30)
