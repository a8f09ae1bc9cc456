"""Every way a state store ends closes its SQLite connection, at once (issue 16).

Python 3.13 warns about a connection freed unclosed ("unclosed database"), and until the
collector frees it, it holds its file descriptors: a server that reopens its store after
each disk fault must not keep one per fault. `sqlite_closed` (conftest.py) fails any of
these tests that leaves a connection or a file of one open, on 3.11 as on 3.13.

The faults, each real, none needing root:
- a commit refused: a deferred foreign key that `COMMIT` finds broken fails inside
  `conn.commit()` on sqlitedict's worker, the same call a full disk fails in (the
  `disk_full` cases of test_faults_storage.py do it with a real full tmpfs, as root);
- a statement refused: `max_page_count` makes SQLite answer SQLITE_FULL, as a full disk;
- the worker ended by a read whose error comes while its rows are stepped;
- an open that fails in the worker's set-up (a file that is no database), or after the
  worker started (sqlitedict's CREATE TABLE refused by the schema).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import eventually
from helpers_queue import Recorder, queue_factory, request
from helpers_sqlite import end_the_worker

from genqueue.errors import StorageError
from genqueue.storage.sqlitedict_adapter import SqliteConnection
from genqueue.storage.state import StateStore

pytestmark = pytest.mark.usefixtures("sqlite_closed")

BIG = b"\0" * 200_000  # more pages than a capped file has left


def refuse_the_next_commit(store: StateStore) -> None:
    """A row that breaks a deferred foreign key, in the store's open transaction: the
    next COMMIT fails inside `conn.commit()`, which ends sqlitedict's worker."""
    conn = store._conn
    conn.execute("PRAGMA foreign_keys=ON")  # per connection; outside a transaction
    conn.execute("CREATE TABLE IF NOT EXISTS parent (id INTEGER PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS child "
        "(p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
    )
    conn.execute("INSERT INTO child VALUES (1)")


def refuse_new_pages(store: StateStore) -> None:
    pages = store._conn.select_one("PRAGMA page_count")[0]
    assert store._conn.select_one(f"PRAGMA max_page_count={pages}")[0] == pages


FAULTS: dict[str, Callable[[StateStore], None]] = {
    "commit_refused": refuse_the_next_commit,
    "statement_refused": refuse_new_pages,
    "worker_ended": lambda store: end_the_worker(store._conn),
}


def fail_once(path: Path, fault: str, i: int) -> None:
    """Open the store, commit a write, make the next one fail by `fault`, close it."""
    store = StateStore(path, synchronous="NORMAL")
    try:
        jobs = store.namespace("jobs")
        store.flush(jobs.put(f"kept-{i:03d}", i))
        FAULTS[fault](store)
        with pytest.raises(StorageError):
            store.flush(jobs.put(f"refused-{i:03d}", BIG), timeout_s=10)
        assert store.failure is not None
    finally:
        store.close()
    assert not store._conn.is_alive() and store._conn.closed


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def settled_threads(expected: int, timeout_s: float = 30.0) -> int:
    """The live thread count once it is back to `expected` (a thread that ended its work
    may take a moment to exit), or, if it never is, the count at the deadline."""
    deadline = time.monotonic() + timeout_s
    while threading.active_count() != expected and time.monotonic() < deadline:
        time.sleep(0.01)  # polling a condition, with a deadline
    return threading.active_count()


# -- each way out ------------------------------------------------------------------------


def test_a_closed_store_has_closed_its_connection(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    worker = store._conn
    store.flush(store.namespace("t").put("k", 1))
    assert not worker.closed
    store.close()
    assert not worker.is_alive() and worker.closed
    store.close()  # twice is fine


def test_a_refused_commit_closes_the_connection_as_the_worker_ends(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db", synchronous="NORMAL")
    try:
        jobs = store.namespace("jobs")
        store.flush(jobs.put("kept", 1))
        refuse_the_next_commit(store)
        with pytest.raises(StorageError, match="FOREIGN KEY constraint failed") as failed:
            store.flush(jobs.put("refused", 2), timeout_s=10)
        assert "SQLite worker died during a commit" in str(failed.value)  # and why it did
        worker = store._conn
        assert not worker.is_alive()
        assert isinstance(worker.death, sqlite3.IntegrityError)
        assert worker.closed  # by the worker itself, before any close()
    finally:
        store.close()
    reopened = StateStore(tmp_path / "state.db")
    try:  # closing rolled the failed transaction back
        assert reopened.namespace("jobs").get("kept") == 1
        assert reopened.namespace("jobs").get("refused") is None
    finally:
        reopened.close()


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_failed_store_closes_its_connection(tmp_path: Path, fault: str) -> None:
    fail_once(tmp_path / "state.db", fault, 0)


def test_an_open_that_fails_in_the_workers_set_up_closes_the_connection(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"not a database, " * 512)
    threads = threading.active_count()
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        StateStore(path)
    assert threading.active_count() == threads  # no worker left behind


def test_an_open_that_fails_after_the_worker_started_closes_the_connection(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:  # sqlitedict's table name taken
        conn.execute("CREATE TABLE t (x)")
        conn.execute("CREATE INDEX meta ON t (x)")
    threads = threading.active_count()
    with pytest.raises(sqlite3.OperationalError, match="already an index named meta"):
        StateStore(path)
    assert threading.active_count() == threads  # the started worker was stopped


def test_the_worker_sets_synchronous_as_it_opens(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db", synchronous="NORMAL")
    try:
        assert isinstance(store._conn, SqliteConnection)
        assert store._conn.select_one("PRAGMA synchronous") == (1,)
    finally:
        store.close()


# -- many faults in one process ----------------------------------------------------------------


def test_a_store_failed_and_reopened_100_times_keeps_its_fds_flat(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    faults = sorted(FAULTS)
    fail_once(path, faults[0], 0)  # the first open creates the files; logging warms up
    fds, threads = fd_count(), threading.active_count()
    for i in range(1, 101):
        fail_once(path, faults[i % len(faults)], i)
    assert fd_count() == fds, "a failed store kept file descriptors"
    assert settled_threads(threads) == threads, "a failed store kept threads"
    store = StateStore(path)
    try:  # every committed write kept, every refused one gone
        kept = store.namespace("jobs").list("")
        assert [k for k, _ in kept] == [f"kept-{i:03d}" for i in range(101)]
    finally:
        store.close()


def test_a_queue_reopened_after_100_store_failures_keeps_its_fds_flat(tmp_path: Path) -> None:
    """What the server does after a disk fault (`JobQueue.reopen`), 100 times over."""
    rec = Recorder(hold_all=True)

    def calls() -> int:  # the processor's calls for "first": one per (re)start of the job
        with rec.cv:
            return sum(1 for call in rec.calls if call.job_id == "first")

    with queue_factory(tmp_path) as queues:
        queue = queues.open(rec)
        queue.submit(request(id="first"))
        eventually(lambda: calls() == 1, "the first job running")
        fds, threads = -1, -1
        for i in range(101):
            assert queue.store is not None
            refuse_new_pages(queue.store)
            with pytest.raises(StorageError):
                for n in range(100):  # a fuller page may take a few more
                    queue.submit(request("x" * 4000, id=f"late-{i}-{n}"))
            queue.reopen()
            # the reopened queue resumes the job (its actor on a shard thread) before the
            # next fault: what it starts is then counted every time, or never
            eventually(lambda n=i + 2: calls() >= n, f"the job resumed after reopen {i + 1}")
            if i == 0:  # after the first reopen: everything lazily made is made
                fds, threads = fd_count(), threading.active_count()
        assert fd_count() == fds, "a reopened queue kept file descriptors"
        assert settled_threads(threads) == threads, "a reopened queue kept threads"
        assert queue.get("first").status in ("queued", "processing")


def test_a_listing_that_meets_a_writes_error_fails_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlitedict keeps one error slot: a listing hands the pending writes to the worker
    and may be the one that meets an earlier statement's error (here a new table's CREATE
    refused by a full disk). It fails the store, so the committer never reports the
    pending writes durable (it did: their error was taken by the listing, then COMMIT)."""
    store = StateStore(tmp_path / "state.db", synchronous="FULL")
    jobs = store.namespace("jobs")
    store.flush()
    hold = threading.Event()
    commit = store._commit
    monkeypatch.setattr(store, "_commit", lambda: (hold.wait(10), commit())[1])
    try:
        refuse_new_pages(store)
        seq = jobs.put("job-1", {"status": "queued"})
        store.namespace("another")  # its CREATE TABLE is refused: the error waits
        eventually(lambda: store._conn.pending_error(), "the CREATE's error in the slot")
        with pytest.raises(StorageError):  # the listing meets it, handing job-1 over
            jobs.list("")
        assert store.failure is not None
        hold.set()
        with pytest.raises(StorageError):
            store.flush(seq)  # never reported durable
        assert store.durable_seq < seq
    finally:
        hold.set()
        store.close()
    again = StateStore(tmp_path / "state.db")
    try:
        assert again.namespace("jobs").get("job-1") is None  # and indeed not stored
    finally:
        again.close()
