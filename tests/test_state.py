"""The state store: durability under kill -9, settings that hold, codec, listing, group commit."""

from __future__ import annotations

import contextlib
import itertools
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers_kill import kill_after
from helpers_sqlite import end_the_worker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genqueue.errors import StorageError
from genqueue.storage.state import Namespace, StateStore

pytestmark = pytest.mark.usefixtures("sqlite_closed")


class Record(msgspec.Struct):
    id: str
    attempts: int = 0
    tags: list[str] = []


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(db: Path) -> Iterator[StateStore]:
    s = StateStore(db)
    yield s
    s.close()


def raw_rows(db: Path, table: str) -> dict[str, bytes]:
    """The table as another process sees it (committed rows only)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return dict(conn.execute(f'SELECT key, value FROM "{table}"').fetchall())


# -- durability: acknowledged writes survive SIGKILL ------------------------------------


@pytest.mark.parametrize(("mode", "arg"), [("flush", 1), ("flush", 8), ("after_commit", None)])
def test_acknowledged_writes_survive_sigkill(db: Path, mode: str, arg: int | None) -> None:
    acked = kill_after(mode, db, acks=300, arg=arg)
    store = StateStore(db)
    try:
        ns = store.namespace("kill")
        missing = [k for k in acked if ns.get(k) != {"key": k, "payload": "x" * 64}]
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged writes lost"
    finally:
        store.close()
    assert set(acked) <= set(raw_rows(db, "kill"))  # and a plain sqlite3 reader sees them


# -- settings that must hold ------------------------------------------------------------


def test_synchronous_full_by_default_and_wal(store: StateStore, db: Path) -> None:
    # Read back through the store's own connection (sqlitedict alone would set OFF on it).
    assert store._conn.select_one("PRAGMA synchronous") == (2,)
    assert store._conn.select_one("PRAGMA journal_mode") == ("wal",)
    ns = store.namespace("t")
    store.flush(ns.put("k", 1))
    assert store._conn.select_one("PRAGMA synchronous") == (2,)  # still held after commits
    with contextlib.closing(sqlite3.connect(db)) as conn:  # WAL is a property of the file
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_synchronous_normal_is_selectable(db: Path) -> None:
    store = StateStore(db, synchronous="NORMAL")
    try:
        assert store.synchronous == "NORMAL"
        assert store._conn.select_one("PRAGMA synchronous") == (1,)
    finally:
        store.close()


def test_values_are_msgpack_never_pickle(store: StateStore, db: Path) -> None:
    ns = store.namespace("codec")
    values: dict[str, Any] = {
        "dict": {"a": 1, "b": [1.5, None, "x"]},
        "struct": Record("j1", 2, ["t"]),
        "str": "héllo",
        "bytes": b"\x00\x80\xff",
        "empty": {},
    }
    for k, v in values.items():
        ns.put(k, v)
    store.flush()
    raw = raw_rows(db, "codec")
    for k, v in values.items():
        assert raw[k] == msgspec.msgpack.encode(v), k  # the bytes on disk are msgpack
    assert msgspec.msgpack.decode(raw["dict"]) == values["dict"]
    assert ns.get("struct", Record) == Record("j1", 2, ["t"])  # typed decode
    assert ns.get("struct") == {"id": "j1", "attempts": 2, "tags": ["t"]}


def test_get_put_delete_and_reopen(db: Path) -> None:
    store = StateStore(db)
    ns = store.namespace("crud")
    assert ns.get("a") is None
    ns.put("a", 1)
    ns.put("b", 2)
    assert ns.get("a") == 1  # reads see the turn's own writes before the commit
    ns.put("a", 3)
    ns.delete("b")
    ns.delete("never-there")
    store.close()  # commits what is queued
    store = StateStore(db)
    try:
        ns = store.namespace("crud")
        assert (ns.get("a"), ns.get("b")) == (3, None)
    finally:
        store.close()


def test_namespaces_are_separate_tables(store: StateStore) -> None:
    a, b = store.namespace("kind_a"), store.namespace("kind_b")
    assert store.namespace("kind_a") is a
    a.put("x", "in a")
    assert b.get("x") is None
    assert b.list() == []
    with pytest.raises(ValueError):
        store.namespace('bad"; DROP TABLE meta; --')


# -- listing ----------------------------------------------------------------------------


def test_list_prefix_in_key_order(store: StateStore) -> None:
    ns = store.namespace("lst")
    keys = ["b/1", "a/2", "a/10", "a/1", "a", "a0", "a.", "ab/1", "a/", "a/é", "a/\U0001f600"]
    for k in keys:
        ns.put(k, k.upper())
    got = ns.list("a/")
    assert [k for k, _ in got] == ["a/", "a/1", "a/10", "a/2", "a/é", "a/\U0001f600"]
    assert all(v == k.upper() for k, v in got)
    assert [k for k, _ in ns.list()] == sorted(keys)
    assert ns.list("zzz") == []


def test_list_start_end_limit(store: StateStore) -> None:
    ns = store.namespace("rng")
    for i in range(20):
        ns.put(f"q/{i:03d}", i)
    ns.put("r/000", -1)
    assert [v for _, v in ns.list("q/", limit=3)] == [0, 1, 2]
    assert [v for _, v in ns.list("q/", start="q/005", limit=3)] == [5, 6, 7]
    assert [v for _, v in ns.list("q/", start="q/017")] == [17, 18, 19]
    assert [v for _, v in ns.list("q/", end="q/003")] == [0, 1, 2]
    assert [v for _, v in ns.list("q/", start="q/004", end="q/006")] == [4, 5]
    assert [v for _, v in ns.list("q/", start="a")] == list(range(20))  # start below prefix
    assert [v for _, v in ns.list("q/", end="zz")] == list(range(20))  # end past prefix
    assert ns.list("q/", limit=0) == []
    # Keyset pagination: resume after the last key seen.
    pages, start = [], None
    while True:
        page = ns.list("q/", start=start, limit=6)
        if not page:
            break
        pages.append([v for _, v in page])
        start = page[-1][0] + "\x00"
    assert pages == [list(range(0, 6)), list(range(6, 12)), list(range(12, 18)), [18, 19]]


_ALPHABET = st.sampled_from(["a", "b", "/", ".", "0", "z", "é", "\x7f", "\U0001f600"])
_KEYS = st.text(_ALPHABET, max_size=5)
_table_ids = itertools.count()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    keys=st.sets(_KEYS, max_size=25),
    prefix=_KEYS,
    start=st.none() | _KEYS,
    end=st.none() | _KEYS,
    limit=st.none() | st.integers(0, 10),
)
def test_list_matches_a_sorted_model(
    store: StateStore,
    keys: set[str],
    prefix: str,
    start: str | None,
    end: str | None,
    limit: int | None,
) -> None:
    ns = store.namespace(f"model{next(_table_ids)}")
    for k in keys:
        ns.put(k, k)
    want = sorted(
        k
        for k in keys
        if k.startswith(prefix) and (start is None or k >= start) and (end is None or k < end)
    )
    if limit is not None:
        want = want[:limit]
    got = ns.list(prefix, start=start, end=end, limit=limit)
    assert [k for k, _ in got] == want
    assert all(k == v for k, v in got)


def test_listing_a_live_prefix_searches_the_key_index(store: StateStore, db: Path) -> None:
    """Start-up lists live work; 50,000 finished rows beside it must not be scanned."""
    ns = store.namespace("jobs")
    for i in range(50_000):
        ns.put(f"done/{i:06d}", i)
    for i in range(5):
        ns.put(f"live/{i}", i)
    store.flush()

    seen: list[tuple[str, tuple[Any, ...]]] = []
    select = store._select

    def spy(sql: str, args: tuple[Any, ...], **kw: Any) -> list[Any]:
        seen.append((sql, args))
        return select(sql, args, **kw)

    store._select = spy  # type: ignore[method-assign]
    try:
        assert [v for _, v in ns.list("live/")] == [0, 1, 2, 3, 4]
        ns.list("live/", start="live/2", end="live/4", limit=1)
    finally:
        del store._select
    assert len(seen) == 2
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for sql, args in seen:
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
            assert any(p.startswith("SEARCH") and "INDEX" in p for p in plan), plan
            assert not any(p.startswith("SCAN") for p in plan), plan
            assert not any("TEMP B-TREE" in p for p in plan), plan  # key order comes free


# -- group commit and the output gate -----------------------------------------------------


def test_group_commit_64_threads(store: StateStore) -> None:
    ns = store.namespace("gc")
    store.flush()
    threads_n, per_thread = 64, 20
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []
    late: list[tuple[int, int]] = []

    def writer(t: int) -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(per_thread):
                seq = ns.put(f"{t:02d}/{i:03d}", i)
                store.flush(seq)
                if store.durable_seq < seq:
                    late.append((seq, store.durable_seq))
        except BaseException as exc:
            errors.append(exc)

    commits_before = store.commits
    threads = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors and not late
    writes = threads_n * per_thread
    commits = store.commits - commits_before
    assert commits <= writes // 4, f"{commits} commits for {writes} writes: no grouping"
    assert len(ns.list()) == writes


def test_after_commit_waits_for_the_covering_commit(store: StateStore) -> None:
    ns = store.namespace("gate")
    store.flush()
    entered, release = threading.Event(), threading.Event()
    commit = store._commit

    def held_commit() -> None:
        entered.set()
        assert release.wait(10)
        commit()

    store._commit = held_commit  # type: ignore[method-assign]
    try:
        seq = ns.put("k", 1)
        seen: list[tuple[int, int]] = []
        done = threading.Event()

        def callback() -> None:
            seen.append((seq, store.durable_seq))
            done.set()

        store.after_commit(seq, callback)
        assert entered.wait(10)
        assert not done.is_set()  # the commit is on its way to disk: no acknowledgement yet
        assert store.durable_seq < seq
        release.set()
        assert done.wait(10)
        assert seen[0][1] >= seq
    finally:
        release.set()
        store._commit = commit  # type: ignore[method-assign]
    # Already durable: the callback runs at once, in the caller's thread.
    ran: list[str] = []
    store.after_commit(seq, lambda: ran.append(threading.current_thread().name))
    assert ran == [threading.current_thread().name]


def test_write_seq_and_durable_seq(store: StateStore) -> None:
    ns: Namespace = store.namespace("seq")
    store.flush()
    a = ns.put("a", 1)
    b = ns.delete("a")
    assert b == a + 1 == store.write_seq
    store.flush()
    assert store.durable_seq >= b
    store.flush()  # nothing new: returns at once


_TURN_CHILD = """
import sys
from genqueue.storage.state import StateStore
store = StateStore(sys.argv[1])
a, b = store.namespace("a"), store.namespace("b")
i = 0
while True:
    store.begin_turn()
    a.put(f"{i:08d}", i)
    b.put(f"{i:08d}", i)
    seq = store.end_turn()
    if i % 50 == 0:
        store.flush(seq)  # some turns are acknowledged; the rest race the kill
        print(i, flush=True)
    i += 1
"""


def test_a_turn_is_stored_whole_or_not_at_all_across_sigkill(tmp_path) -> None:
    """Two tables written in one turn: after SIGKILL, every turn is in both or in neither."""
    path = tmp_path / "turns.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _TURN_CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    for _ in range(20):  # let a few thousand turns go by, then kill mid-stream
        assert child.stdout.readline()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    child.stdout.close()
    store = StateStore(path)
    try:
        a = {k for k, _ in store.namespace("a").list()}
        b = {k for k, _ in store.namespace("b").list()}
    finally:
        store.close()
    assert len(a) >= 19 * 50, "acknowledged turns are missing"
    assert a == b


def test_writes_of_an_open_turn_are_not_queued_until_it_ends(store: StateStore) -> None:
    ns = store.namespace("turn")
    store.flush()
    before = store.write_seq
    store.begin_turn()
    ns.put("x", 1)
    ns.put("y", 2)
    ns.delete("y")
    assert store.write_seq == before  # nothing reached the writer yet
    assert ns.get("x") == 1 and ns.get("y") is None  # the turn reads its own writes
    seq = store.end_turn()
    assert seq == before + 1  # one atomic batch
    store.flush(seq)
    assert ns.list() == [("x", 1)]


def test_a_discarded_turn_stores_nothing(store: StateStore) -> None:
    ns = store.namespace("discard")
    store.begin_turn()
    ns.put("x", 1)
    store.discard_turn()
    assert store.end_turn() == 0
    store.flush()
    assert ns.get("x") is None


def test_writes_waiting_for_the_commit_are_read_and_listed(store: StateStore) -> None:
    """Pending writes are handed to SQLite in coalesced groups; reads must see them all."""
    ns = store.namespace("pending")
    for i in range(1000):
        ns.put(f"k/{i:04d}", i)
    for i in range(0, 1000, 2):
        ns.delete(f"k/{i:04d}")
    ns.put("k/0000", "back")  # put, delete, put again: the last write wins
    assert ns.get("k/0001") == 1 and ns.get("k/0002") is None
    listed = ns.list("k/")
    assert listed[0] == ("k/0000", "back")
    assert [k for k, _ in listed[1:]] == [f"k/{i:04d}" for i in range(1, 1000, 2)]
    store.flush()
    assert ns.list("k/") == listed


def test_a_read_fails_promptly_when_the_sqlite_worker_has_died(tmp_path: Path) -> None:
    """A commit refused by the disk kills sqlitedict's worker thread (see
    test_faults_storage.py); a read sent to it then must fail, not wait forever."""
    store = StateStore(tmp_path / "state.db")
    ns = store.namespace("reads")
    ns.put("k", 1)
    store.flush()
    end_the_worker(store._conn)  # as a read error met mid-result would
    outcome: list[BaseException | None] = []
    reader = threading.Thread(target=lambda: outcome.append(_read_error(ns)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "the read waited for a dead worker"
    assert isinstance(outcome[0], StorageError), outcome
    assert "SQLite worker died" in str(outcome[0])
    store.close()


def _read_error(ns: Namespace) -> BaseException | None:
    try:
        ns.list("")
    except BaseException as exc:
        return exc
    return None
