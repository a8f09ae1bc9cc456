"""What the state store relies on in sqlitedict, pinned (genqueue/storage/sqlitedict_adapter.py).

The adapter drives sqlitedict's worker thread directly: its request queue, its commit and
end-of-answer sentinels, its one error slot, and how its loop ends. None of that is
sqlitedict's public API, so its version is pinned exactly, and each behaviour the store
relies on has a test here that fails if an upgrade changes it. Each test runs on a real
file, and `sqlite_closed` fails any that leaves a connection open.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import pickle
import sqlite3
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import sqlitedict
from helpers_sqlite import end_the_worker, is_closed

from genqueue.storage import codec
from genqueue.storage.sqlitedict_adapter import (
    SYNC_CODES,
    Reply,
    SqliteConnection,
    SyncLevel,
    WorkerEnded,
    _File,
)

pytestmark = pytest.mark.usefixtures("sqlite_closed")

ROOT = Path(__file__).resolve().parent.parent
PINNED = "2.1.0"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def conn(db: Path) -> Iterator[SqliteConnection]:
    conn = SqliteConnection(str(db), synchronous="FULL")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    commit(conn)
    yield conn
    conn.close()


def commit(conn: SqliteConnection) -> None:
    done = Reply()
    conn.commit(done)
    assert conn.answer(done, timeout_s=10) == []
    conn.raise_error()


def outside_rows(db: Path, sql: str = "SELECT k, v FROM t ORDER BY k") -> list[tuple[object, ...]]:
    """What another connection to the file sees: only committed rows."""
    with contextlib.closing(sqlite3.connect(db)) as other:
        return other.execute(sql).fetchall()


# -- the version and the names ------------------------------------------------------------


def test_sqlitedict_is_pinned_exactly_and_installed_at_the_pin() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = [d for d in pyproject["project"]["dependencies"] if d.startswith("sqlitedict")]
    assert deps == [f"sqlitedict=={PINNED}"]
    assert f"sqlitedict=={PINNED}" in (ROOT / "constraints.txt").read_text().split()
    assert importlib.metadata.version("sqlitedict") == PINNED == sqlitedict.__version__


def test_the_private_names_the_adapter_uses_are_there() -> None:
    assert sqlitedict._REQUEST_COMMIT == "--commit--"
    assert sqlitedict._RESPONSE_NO_MORE == "--no more--"
    assert sqlitedict._REQUEST_CLOSE == "--close--"
    worker = sqlitedict.SqliteMultithread
    for name in ("_connect", "run", "execute", "check_raise_error", "close"):
        assert callable(getattr(worker, name)), name
    assert callable(sqlitedict.SqliteDict._new_conn)  # how `_File` puts in its worker


# -- order, commits, replies --------------------------------------------------------------


def test_statements_run_in_the_order_sent_and_a_reply_ends_after_its_rows(
    conn: SqliteConnection,
) -> None:
    for k in range(100):
        conn.execute("INSERT INTO t VALUES (?, ?)", (k, f"v{k}"))  # fire and forget
    conn.execute("UPDATE t SET v = 'last' WHERE k = 99")
    rows = Reply()
    conn.execute("SELECT k, v FROM t ORDER BY k", (), rows)
    got = conn.answer(rows, timeout_s=10)
    assert got == [(k, f"v{k}") for k in range(99)] + [(99, "last")]


def test_a_commit_covers_every_write_sent_before_it_and_none_is_visible_before(
    conn: SqliteConnection, db: Path
) -> None:
    for k in range(50):
        conn.execute("INSERT INTO t VALUES (?, ?)", (k, "x"))
    assert conn.select_one("SELECT COUNT(*) FROM t") == (50,)  # they ran...
    assert outside_rows(db, "SELECT COUNT(*) FROM t") == [(0,)]  # ...in an open transaction
    commit(conn)
    assert outside_rows(db, "SELECT COUNT(*) FROM t") == [(50,)]


def test_an_answer_that_does_not_come_in_time_is_a_timeout_not_a_hang(
    conn: SqliteConnection, db: Path
) -> None:
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")  # the worker's next write waits on this lock
        conn.execute("INSERT INTO t VALUES (1, 'a')")
        done = Reply()
        conn.commit(done)
        with pytest.raises(TimeoutError):
            conn.answer(done, timeout_s=0.3)
        other.execute("ROLLBACK")
        assert conn.answer(done, timeout_s=10) == []  # the same answer, once the lock went
    conn.raise_error()
    assert outside_rows(db) == [(1, "a")]


# -- errors ---------------------------------------------------------------------------------


def test_a_failed_write_surfaces_once_at_the_next_call_from_any_thread(
    conn: SqliteConnection,
) -> None:
    ran = Reply()
    conn.execute("INSERT INTO missing VALUES (1)", (), ran)
    assert conn.answer(ran, timeout_s=10) == []  # the answer itself does not raise it
    raised: list[BaseException] = []

    def reader() -> None:
        try:
            conn.execute("SELECT 1")
        except sqlite3.Error as exc:
            raised.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    thread.join(timeout=10)
    assert len(raised) == 1 and "no such table: missing" in str(raised[0])
    conn.raise_error()  # taken by the reader: the slot is empty now
    assert conn.is_alive()


def test_execute_raises_the_pending_error_and_then_does_not_queue_its_statement(
    conn: SqliteConnection,
) -> None:
    ran = Reply()
    conn.execute("INSERT INTO missing VALUES (1)", (), ran)
    conn.answer(ran, timeout_s=10)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        conn.execute("INSERT INTO t VALUES (1, 'never sent')")
    assert conn.select_one("SELECT COUNT(*) FROM t") == (0,)


def test_the_worker_goes_on_after_a_failed_statement_and_commits_what_follows(
    conn: SqliteConnection, db: Path
) -> None:
    """Why the store waits for its statements' answers and looks for an error before it
    sends COMMIT: sqlitedict would commit the rest of a batch whose one statement failed."""
    conn.execute("INSERT INTO t VALUES (1, 'before')")
    ran = Reply()
    conn.execute("INSERT INTO missing VALUES (1)", (), ran)
    conn.answer(ran, timeout_s=10)
    with pytest.raises(sqlite3.OperationalError):
        conn.raise_error()
    conn.execute("INSERT INTO t VALUES (2, 'after')")
    commit(conn)
    assert outside_rows(db) == [(1, "before"), (2, "after")]


def test_a_refused_commit_ends_the_worker_which_closes_its_connection(
    conn: SqliteConnection, db: Path
) -> None:
    conn.execute("PRAGMA foreign_keys=ON")  # per connection, outside a transaction
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE child (p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
    )
    commit(conn)
    conn.execute("INSERT INTO t VALUES (1, 'refused with the commit')")
    conn.execute("INSERT INTO child VALUES (1)")  # COMMIT finds the key broken
    done = Reply()
    conn.commit(done)
    with pytest.raises(WorkerEnded, match="FOREIGN KEY constraint failed") as ended:
        conn.answer(done, timeout_s=10)
    assert isinstance(ended.value.death, sqlite3.IntegrityError)
    assert conn.death is ended.value.death
    assert not conn.is_alive() and conn.closed  # by the worker, before any close()
    assert outside_rows(db) == []  # the open transaction was rolled back
    conn.raise_error()  # nothing else pending: the death is not also in the error slot


def test_an_error_while_stepping_a_result_ends_the_worker(conn: SqliteConnection) -> None:
    end_the_worker(conn)
    assert isinstance(conn.death, sqlite3.OperationalError)
    assert conn.closed
    with pytest.raises(WorkerEnded):  # a query sent to a dead worker never hangs
        conn.select_one("SELECT 1")


# -- opening and closing --------------------------------------------------------------------


def test_close_rolls_back_what_was_not_committed_and_closes_the_connection(
    conn: SqliteConnection, db: Path
) -> None:
    conn.execute("INSERT INTO t VALUES (1, 'committed')")
    commit(conn)
    conn.execute("INSERT INTO t VALUES (2, 'not committed')")
    conn.close()
    assert not conn.is_alive() and conn.closed and conn.death is None
    assert outside_rows(db) == [(1, "committed")]
    conn.close()  # twice is fine


def test_close_after_the_worker_died_returns_and_raises_nothing(conn: SqliteConnection) -> None:
    end_the_worker(conn)
    conn.close()
    assert conn.closed


def test_an_open_that_fails_in_the_workers_set_up_leaves_nothing_open(db: Path) -> None:
    db.write_bytes(b"not a database, " * 512)
    threads = threading.active_count()
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        SqliteConnection(str(db), synchronous="FULL")
    assert threading.active_count() == threads


def test_an_open_that_fails_after_the_worker_started_stops_it(db: Path) -> None:
    with contextlib.closing(sqlite3.connect(db)) as other:  # the table's name is taken
        other.execute("CREATE TABLE x (y)")
        other.execute("CREATE INDEX meta ON x (y)")
    threads = threading.active_count()
    with pytest.raises(sqlite3.OperationalError, match="already an index named meta"):
        SqliteConnection(str(db), synchronous="FULL")
    assert threading.active_count() == threads


# -- settings and codec -------------------------------------------------------------------


@pytest.mark.parametrize("level", ["OFF", "NORMAL", "FULL", "EXTRA"])
def test_synchronous_and_wal_are_in_effect_on_the_workers_connection(
    db: Path, level: SyncLevel
) -> None:
    conn = SqliteConnection(str(db), synchronous=level)
    try:
        assert conn.select_one("PRAGMA synchronous") == (SYNC_CODES[level],)
        assert conn.select_one("PRAGMA journal_mode") == ("wal",)
        conn.execute("CREATE TABLE t (k)")
        conn.execute("INSERT INTO t VALUES (1)")
        commit(conn)
        assert conn.select_one("PRAGMA synchronous") == (SYNC_CODES[level],)  # still held
    finally:
        conn.close()
    assert outside_rows(db, "PRAGMA journal_mode") == [("wal",)]  # WAL is kept by the file


def test_plain_sqlitedict_sets_synchronous_off_and_pickles(db: Path) -> None:
    """What the adapter overrides: sqlitedict's own worker and codec."""
    plain = sqlitedict.SqliteDict(str(db), tablename="plain", outer_stack=False)
    try:
        assert plain.conn.select_one("PRAGMA synchronous") == (0,)
        plain["k"] = {"a": 1}
        plain.commit()
    finally:
        plain.close()
    [(blob,)] = outside_rows(db, "SELECT value FROM plain")
    assert pickle.loads(blob) == {"a": 1}


def test_our_files_values_are_msgpack_and_a_pickle_is_never_loaded(db: Path) -> None:
    file = _File(str(db), tablename="meta", synchronous="FULL")
    worker = file.conn
    try:
        file["k"] = {"a": [1, 2]}
        file.commit()
        assert outside_rows(db, "SELECT value FROM meta") == [
            (msgspec.msgpack.encode({"a": [1, 2]}),)
        ]
        assert file["k"] == {"a": [1, 2]}
        file.conn.execute("REPLACE INTO meta VALUES ('p', ?)", (pickle.dumps({"a": 1}),))
        with pytest.raises(msgspec.DecodeError):
            file["p"]
    finally:
        file.close()
    assert file.encode is codec.encode
    assert worker.connection is not None and is_closed(worker.connection)
