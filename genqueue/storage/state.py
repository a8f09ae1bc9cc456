"""The state store: one SQLite file, with atomic turns, group commit and an output gate.

One connection on one worker thread owns the file (sqlitedict's, reached only through
sqlitedict_adapter.py), so there is exactly one writer (two writers on one file lose
writes, see measured-facts.md); its connection is closed however the store ends. Each
namespace is its own table of that file (namespace.py, tables.py).

A turn's writes are atomic: between `begin_turn()` and `end_turn()` a thread's
writes are buffered, then queued to the worker together under the store's lock, and
the committer only ever commits between whole batches (a crash never keeps half a
turn). Outside a turn each write is its own batch. A committer thread turns queued
writes into transactions. While one commit is on disk the next writes pile up, and the next
commit covers them all (group commit). `after_commit(seq, fn)` and `flush(seq)`
release an actor's reply only once every write up to `seq` is durable (the
Durable Objects output gate; the callbacks run on the releaser, release.py). Values are
encoded with msgspec's MessagePack (codec.py), never pickle.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from genqueue.errors import StorageError
from genqueue.storage.namespace import Namespace, WriteCache
from genqueue.storage.release import Releaser
from genqueue.storage.sqlitedict_adapter import Reply, SqliteConnection, SyncLevel, WorkerEnded
from genqueue.storage.tables import Writes, check_name, create_sql, write_statements

__all__ = ["Namespace", "StateStore", "SyncLevel"]

_COMMIT_TIMEOUT_S = 120.0  # a statement group or a COMMIT that takes longer fails the store


class StateStore:
    """One SQLite file, one writer, group commits, durable acknowledgements."""

    def __init__(self, path: str | Path, *, synchronous: SyncLevel = "FULL"):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Set as the connection opens (sqlitedict would set OFF), and read back.
        self._conn = SqliteConnection(str(path), synchronous=synchronous)
        try:  # from here on, a failure closes the file before it is reported
            self._start(synchronous)
        except BaseException:
            self._conn.close()
            raise

    def _start(self, synchronous: SyncLevel) -> None:
        self.synchronous: SyncLevel = synchronous
        self._tables: dict[str, Namespace] = {}
        self._cv = threading.Condition()
        self._write_seq = 0
        self._durable_seq = 0
        self._failure: BaseException | None = None
        self._callbacks: list[tuple[int, int, Callable[[], None]]] = []
        self._cb_order = itertools.count()
        self._waiters: list[tuple[int, int, threading.Lock]] = []  # flush() callers
        self._local = threading.local()
        # Writes not yet handed to SQLite: table -> key -> value (None: deleted). Nested
        # string-keyed dicts, not (table, key) tuples: nothing for the cyclic GC to track.
        self._pending: Writes = {}
        self._closing = False
        self._committer_idle = False
        self.commits = 0
        self._committer = threading.Thread(
            target=self._commit_loop, name="state-committer", daemon=True
        )
        self._releaser = Releaser(self._cv)
        self._committer.start()
        try:
            self._releaser.start()
        except BaseException:
            self.close()  # the committer stops; the file is closed
            raise

    # -- namespaces -------------------------------------------------------------------------

    def namespace(self, name: str, *, cache: int = 0) -> Namespace:
        """The table `name`, created on first use.

        `cache` > 0 keeps the values of the last `cache` keys written in memory (write-through,
        in write order with the SQLite queue), so reads of recent writes skip the worker thread.
        """
        ns = self._tables.get(name)
        if ns is not None:
            if cache and ns.cache is None:
                ns.cache = WriteCache(cache)
            return ns
        check_name(name)
        with self._cv:
            ns = self._tables.get(name)
            if ns is None:
                self._on_worker(self._conn.execute, create_sql(name))
                self._write_seq += 1
                self._cv.notify_all()
                ns = self._tables[name] = Namespace(self, name)
                if cache:
                    ns.cache = WriteCache(cache)
        # No flush: later statements queue behind the CREATE on the same worker thread.
        return ns

    # -- raw operations (used by Namespace) ---------------------------------------------------

    def _check(self) -> None:
        if self._failure is not None:
            raise StorageError(f"state store failed: {self._failure}") from self._failure

    def begin_turn(self) -> None:
        """Buffer this thread's writes until `end_turn` (reads see them)."""
        self._local.batch = {}

    def discard_turn(self) -> None:
        """Drop the writes of this thread's open turn (it failed)."""
        if getattr(self._local, "batch", None) is not None:
            self._local.batch = {}

    def end_turn(self) -> int:
        """Queue the turn's writes as one atomic batch; returns its sequence number (0: none)."""
        batch: dict[str, dict[str, bytes | None]] | None = getattr(self._local, "batch", None)
        self._local.batch = None
        if not batch:
            return 0
        with self._cv:
            self._check()
            for table, writes in batch.items():
                pending = self._pending.get(table)
                if pending is None:
                    self._pending[table] = writes  # the turn's dict: not used after this
                else:
                    pending.update(writes)
                cache = self._tables[table].cache if table in self._tables else None
                if cache is not None:
                    cache.put_many(writes)
            return self._queued()

    def _queued(self) -> int:
        self._write_seq += 1
        if self._committer_idle:
            self._cv.notify()
        return self._write_seq

    def _buffered(self, table: str, key: str) -> tuple[bool, bytes | None]:
        """(found, value) of a write of this thread's open turn (value None: deleted)."""
        batch = getattr(self._local, "batch", None)
        writes = batch.get(table) if batch else None
        if writes is None or key not in writes:
            return False, None
        return True, writes[key]

    def _write(self, table: str, key: str, value: bytes | None) -> int:
        """Write (value None: delete) in this thread's open turn, or as a batch of its own."""
        batch = getattr(self._local, "batch", None)
        if batch is not None:
            writes = batch.get(table)
            if writes is None:
                writes = batch[table] = {}
            writes[key] = value
            return 0
        with self._cv:
            self._check()
            self._pending.setdefault(table, {})[key] = value
            cache = self._tables[table].cache if table in self._tables else None
            if cache is not None:
                cache.put(key, value)
            return self._queued()

    def _pending_value(self, table: str, key: str) -> tuple[bool, bytes | None]:
        """(found, value) of a write not yet handed to SQLite (value None: deleted)."""
        with self._cv:
            writes = self._pending.get(table)
            if writes is not None and key in writes:
                return True, writes[key]
        return False, None

    def _drain_pending(self, answers: Reply | None = None) -> None:
        """Hand every pending write to the SQLite worker (lock held), coalesced
        (tables.write_statements). With `answers`, the worker answers there once the last of
        them ran (at once if there are none)."""
        statements = write_statements(self._pending)
        if answers is not None and not statements:
            statements.append(("SELECT 1", []))
        for n, (sql, args) in enumerate(statements, 1):  # an earlier error fails the store
            self._on_worker(
                self._conn.execute, sql, args, answers if n == len(statements) else None
            )
        self._pending = {}  # only once every write was handed over

    def _select(self, sql: str, args: tuple[Any, ...], *, drain: bool = False) -> list[Any]:
        """Run a query on the worker; `drain` first hands it the pending writes (a listing
        must see them), in the same locked step so the query is queued behind them.

        A commit refused by the disk kills sqlitedict's worker, and a query queued behind it
        would wait forever: `answer` checks the worker lives while it waits.
        """
        self._check()
        rows = Reply()
        with self._cv:
            if drain:
                self._drain_pending()
            self._on_worker(self._conn.execute, sql, args, rows)
        try:
            out = self._conn.answer(rows)
        except WorkerEnded as ended:
            self._check()
            died = StorageError(f"state store read failed: the SQLite worker died{_why(ended)}")
            with self._cv:  # the store is failed: writes refused, close forced
                self._fail(died)
            raise died from None
        with self._cv:
            self._on_worker(self._conn.raise_error)
        return out

    def _on_worker(self, call: Callable[..., Any], *args: Any) -> None:
        """Call sqlitedict (lock held) where it may raise the worker's last error.

        sqlitedict keeps one error slot for its worker, and whichever thread calls it next
        gets that error, whether it came from its own query or from a write of a commit.
        So an error seen here fails the store, under the same lock the committer holds when
        it looks for errors before sending COMMIT: a write's error is never taken by a
        reader and then missed by the committer."""
        try:
            call(*args)
        except Exception as exc:
            error = StorageError(f"state store failed: {exc}")
            self._fail(error)
            raise error from exc

    def _fail(self, error: BaseException) -> None:
        """Mark the store failed (lock held): writes refused from now on, close forced."""
        if self._failure is None:
            self._failure = error
        self._cv.notify_all()

    # -- commits ------------------------------------------------------------------------------

    @property
    def write_seq(self) -> int:
        """Sequence number of the latest queued write."""
        return self._write_seq

    @property
    def durable_seq(self) -> int:
        """Every write up to this sequence number is committed."""
        return self._durable_seq

    def after_commit(self, seq: int, callback: Callable[[], None]) -> None:
        """Run `callback` once every write up to `seq` is durable (now, if it already is).

        Callbacks run on the releaser thread, in sequence order (or on the caller's thread
        when nothing is waiting to be released): they must be quick.
        """
        with self._cv:
            if self._failure is None and (seq > self._durable_seq or self._releaser.pending):
                heapq.heappush(self._callbacks, (seq, next(self._cb_order), callback))
                if seq <= self._durable_seq:
                    self._hand_over(self._durable_seq)
                return
        callback()

    def flush(self, seq: int | None = None, timeout_s: float = 30.0) -> None:
        """Block until every write up to `seq` (default: all so far) is durable."""
        target = self._write_seq if seq is None else seq
        if target <= self._durable_seq:
            self._check()
            return
        done = threading.Lock()
        done.acquire()
        with self._cv:
            if target <= self._durable_seq or self._failure is not None:
                done.release()
            else:  # released by the committer itself: no hop through the releaser
                heapq.heappush(self._waiters, (target, next(self._cb_order), done))
        if not done.acquire(timeout=timeout_s):
            raise StorageError(f"commit did not finish within {timeout_s} s")
        self._check()

    def _commit_loop(self) -> None:
        while True:
            with self._cv:
                self._committer_idle = True
                self._cv.wait_for(lambda: self._write_seq > self._durable_seq or self._closing)
                self._committer_idle = False
                if self._write_seq == self._durable_seq and self._closing:
                    return
                snap = self._write_seq
            try:
                self._commit()
            except BaseException as exc:  # disk full, read-only, I/O error
                with self._cv:
                    self._failure = exc
                    for _, _, waiter in self._waiters:
                        waiter.release()
                    self._waiters = []
                    due, self._callbacks = self._callbacks, []
                    self._releaser.hand_over([cb for _, _, cb in due])
                    self._cv.notify_all()
                return
            self._complete(snap)

    def _commit(self) -> None:
        """Hand the pending writes to the worker under the lock (so a commit never splits a
        batch); COMMIT only once every one of them succeeded.

        sqlitedict's worker goes on after a failed statement and commits whatever it is
        sent: a COMMIT queued behind a statement that failed (SQLITE_FULL when a table needs
        a page the disk cannot give) would store part of a turn whose caller is told it
        failed. So the last statement answers when it ran: all of them ran, and their errors
        are known (`_on_worker`), before the COMMIT is sent. A failed statement leaves the
        transaction open and uncommitted, and the store failed: closing rolls it back.
        """
        ran = Reply()
        with self._cv:
            self._drain_pending(ran)
        self._answered(ran, "a write")
        done = Reply()
        with self._cv:
            self._on_worker(self._conn.raise_error)
            if self._failure is not None:  # a reader met this commit's error first
                raise StorageError(f"state store failed: {self._failure}")
            self._conn.commit(done)
        self._answered(done, "a commit")
        with self._cv:
            self._on_worker(self._conn.raise_error)

    def _answered(self, reply: Reply, what: str) -> None:
        """Wait for the worker's end-of-answer. Its worker runs `conn.commit()` unguarded: a
        commit refused by the disk (full, read-only) kills it and no answer comes."""
        try:
            self._conn.answer(reply, timeout_s=_COMMIT_TIMEOUT_S)
        except WorkerEnded as ended:
            raise StorageError(
                f"the SQLite worker died during {what} (disk full or I/O error){_why(ended)}"
            ) from None
        except TimeoutError:
            raise StorageError(
                f"the SQLite worker did not finish {what} in {_COMMIT_TIMEOUT_S:g} s"
            ) from None

    def _complete(self, snap: int) -> None:
        with self._cv:
            self._durable_seq = snap
            self.commits += 1
            while self._waiters and self._waiters[0][0] <= snap:
                heapq.heappop(self._waiters)[2].release()
            self._hand_over(snap)

    def _hand_over(self, durable: int) -> None:
        """Pass the callbacks now durable to the releaser (lock held): the committer goes on
        with the next commit at once instead of running them."""
        due = []
        while self._callbacks and self._callbacks[0][0] <= durable:
            due.append(heapq.heappop(self._callbacks)[2])
        if due:
            self._releaser.hand_over(due)

    def set_release_context(self, context: Callable[[], AbstractContextManager[Any]]) -> None:
        """Run each group of released callbacks inside `context()` (the actor system uses it
        to send what a group of turns sends together)."""
        self._releaser.context = context

    @property
    def failure(self) -> BaseException | None:
        """The error that stopped commits, if any (callbacks check it to know the outcome)."""
        return self._failure

    def close(self) -> None:
        """Commit what is queued, then close the file (its connection closed on return, even
        after a failure: a store reopened after every fault holds one connection)."""
        with self._cv:
            if self._closing:
                return
            self._closing = True
            self._cv.notify_all()
        self._committer.join(timeout=30)
        self._releaser.stop()
        self._conn.close()  # returns once the connection is closed, whatever state it was in


def _why(ended: WorkerEnded) -> str:
    """What ended the SQLite worker, for a message."""
    return f": {ended.death}" if ended.death is not None else ""
