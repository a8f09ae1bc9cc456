"""The state store: one SQLite file through sqlitedict, with group commit and an output gate.

One `SqliteDict` owns the file: one connection and one worker thread, so there is
exactly one writer (two writers on one file lose writes, see measured-facts.md). It is a
`SqliteFile` (sqlite_file.py), whose connection is closed however the store ends.
Each namespace is its own table (`key TEXT PRIMARY KEY, value BLOB`, sqlitedict's
schema) reached through that same connection, so a prefix listing is a range scan
of the primary-key index: it costs what it returns, not the size of the table.

A turn's writes are atomic: between `begin_turn()` and `end_turn()` a thread's
writes are buffered, then queued to the worker together under the store's lock, and
the committer only ever commits between whole batches (a crash never keeps half a
turn). Outside a turn each write is its own batch. A committer thread turns queued
writes into transactions. While one commit is on disk the next writes pile up, and the next
commit covers them all (group commit). `after_commit(seq, fn)` and `flush(seq)`
release an actor's reply only once every write up to `seq` is durable (the
Durable Objects output gate). Values are encoded with msgspec's MessagePack,
never pickle.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import queue
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from genqueue.errors import StorageError
from genqueue.storage.sqlite_file import SqliteFile, Worker, shut

__all__ = ["Namespace", "StateStore", "SyncLevel"]

log = logging.getLogger("genqueue.state")

T = TypeVar("T")
SyncLevel = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
_SYNC_CODES = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}
_COMMIT = "--commit--"  # sqlitedict's commit request
_NO_MORE = "--no more--"  # sqlitedict's end of a result
_ROWS = 400  # rows per statement (SQLite allows 32,766 variables)
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_ENCODER = msgspec.msgpack.Encoder()
_DECODERS: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def _decoder(type_: Any) -> msgspec.msgpack.Decoder[Any]:
    dec = _DECODERS.get(type_)
    if dec is None:
        dec = _DECODERS[type_] = msgspec.msgpack.Decoder(type_)
    return dec


def _prefix_end(prefix: str) -> str:
    """The smallest string greater than every string starting with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class StateStore:
    """One SQLite file, one writer, group commits, durable acknowledgements."""

    def __init__(self, path: str | Path, *, synchronous: SyncLevel = "FULL"):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # The worker sets `synchronous` as it opens the connection (sqlitedict would set OFF).
        self._db = SqliteFile(
            str(path),
            tablename="meta",
            synchronous=synchronous,
            encode=_ENCODER.encode,
            decode=_decoder(Any).decode,
        )
        self._conn: Worker = self._db.conn
        try:  # from here on, a failure closes the file before it is reported
            row = self._conn.select_one("PRAGMA synchronous")  # check that it held
            if row is None or row[0] != _SYNC_CODES[synchronous]:
                raise StorageError(f"could not set PRAGMA synchronous={synchronous} (got {row})")
            self._start(synchronous)
        except BaseException:
            shut(self._db)
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
        self._pending: dict[str, dict[str, bytes | None]] = {}
        self._closing = False
        self._committer_idle = False
        self.commits = 0
        self._committer = threading.Thread(
            target=self._commit_loop, name="state-committer", daemon=True
        )
        self._releasing = 0  # batches of callbacks handed over but not yet run
        self._release_context: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
        self._released: queue.Queue[list[Callable[[], None]] | None] = queue.Queue()
        self._releaser = threading.Thread(target=self._release_loop, name="state-releaser")
        self._releaser.daemon = True
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
                ns.cache = _WriteCache(cache)
            return ns
        if not _TABLE_NAME.match(name):
            raise ValueError(f"namespace name {name!r} must be an identifier")
        with self._cv:
            ns = self._tables.get(name)
            if ns is None:
                self._conn.execute(
                    f'CREATE TABLE IF NOT EXISTS "{name}" (key TEXT PRIMARY KEY, value BLOB)'
                )
                self._write_seq += 1
                self._cv.notify_all()
                ns = self._tables[name] = Namespace(self, name)
                if cache:
                    ns.cache = _WriteCache(cache)
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

    def _drain_pending(self, answers: queue.Queue[Any] | None = None) -> None:
        """Hand every pending write to the SQLite worker (lock held). With `answers`, the
        worker answers there once the last of them ran (at once if there are none).

        Writes are coalesced: the last write of each key wins, which is the state applying
        them one by one would reach. So a group of turns costs one multi-row REPLACE and
        one DELETE per table, not a statement per write.
        """
        statements: list[tuple[str, list[Any]]] = []
        puts: dict[str, list[Any]] = {}
        dels: dict[str, list[str]] = {}
        for table, writes in self._pending.items():
            for key, value in writes.items():
                if value is None:
                    dels.setdefault(table, []).append(key)
                else:
                    puts.setdefault(table, []).extend((key, value))
        self._pending = {}
        for table, flat in puts.items():
            for i in range(0, len(flat), 2 * _ROWS):
                part = flat[i : i + 2 * _ROWS]
                rows = ",".join(["(?,?)"] * (len(part) // 2))
                statements.append((f'REPLACE INTO "{table}" (key, value) VALUES {rows}', part))
        for table, keys in dels.items():
            for i in range(0, len(keys), _ROWS):
                part = keys[i : i + _ROWS]
                marks = ",".join(["?"] * len(part))
                statements.append((f'DELETE FROM "{table}" WHERE key IN ({marks})', part))
        if answers is not None and not statements:
            statements.append(("SELECT 1", []))
        for n, (sql, args) in enumerate(statements, 1):
            self._conn.execute(sql, args, answers if n == len(statements) else None)

    def _select(self, sql: str, args: tuple[Any, ...], *, drain: bool = False) -> list[Any]:
        """Run a query on the worker; `drain` first hands it the pending writes (a listing
        must see them), in the same locked step so the query is queued behind them.

        A commit refused by the disk kills sqlitedict's worker, and a query queued behind it
        would wait forever: the answer is awaited in short steps, checking the worker lives.
        """
        self._check()
        rows: queue.Queue[Any] = queue.Queue()
        with self._cv:
            if drain:
                self._drain_pending()
            self._on_worker(self._conn.execute, sql, args, rows)
        out = []
        while True:
            try:
                row = rows.get(timeout=0.1)
            except queue.Empty:
                if not self._conn.is_alive():
                    self._check()
                    died = StorageError(
                        f"state store read failed: the SQLite worker died{self._death()}"
                    )
                    with self._cv:  # the store is failed: writes refused, close forced
                        self._fail(died)
                    raise died from None
                continue
            if row == _NO_MORE:
                break
            out.append(row)
        with self._cv:
            self._on_worker(self._conn.check_raise_error)
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
            if self._failure is None and (seq > self._durable_seq or self._releasing):
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
                    self._releasing += 1
                    self._cv.notify_all()
                self._released.put([cb for _, _, cb in due])
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
        ran: queue.Queue[Any] = queue.Queue()
        with self._cv:
            self._drain_pending(ran)
        self._answer(ran, "a write")
        done: queue.Queue[Any] = queue.Queue()
        with self._cv:
            self._on_worker(self._conn.check_raise_error)
            if self._failure is not None:  # a reader met this commit's error first
                raise StorageError(f"state store failed: {self._failure}")
            self._conn.execute(_COMMIT, None, done)
        self._answer(done, "a commit")
        with self._cv:
            self._on_worker(self._conn.check_raise_error)

    def _answer(self, answers: queue.Queue[Any], what: str) -> None:
        """Wait for the worker's end-of-answer. Its worker runs `conn.commit()` unguarded: a
        commit refused by the disk (full, read-only) kills it and no answer comes."""
        for _ in range(1200):  # 120 s
            try:
                if answers.get(timeout=0.1) == _NO_MORE:
                    return
            except queue.Empty:
                if not self._conn.is_alive():
                    raise StorageError(
                        f"the SQLite worker died during {what} (disk full or I/O error)"
                        f"{self._death()}"
                    ) from None
        raise StorageError(f"the SQLite worker did not finish {what} in 120 s")

    def _death(self) -> str:
        """What ended the SQLite worker (its thread has ended), for a message."""
        death = self._conn.death
        return f": {death}" if death is not None else ""

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
            self._releasing += 1
            self._released.put(due)

    def set_release_context(self, context: Callable[[], AbstractContextManager[Any]]) -> None:
        """Run each group of released callbacks inside `context()` (the actor system uses it
        to send what a group of turns sends together)."""
        self._release_context = context

    def _release_loop(self) -> None:
        while True:
            due = self._released.get()
            if due is None:
                return
            try:
                with self._release_context():
                    for callback in due:
                        try:
                            callback()
                        except Exception:
                            log.exception("an after-commit callback failed")
            except Exception:
                log.exception("releasing after-commit callbacks failed")
            with self._cv:
                self._releasing -= 1

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
        self._released.put(None)
        if self._releaser.is_alive():
            self._releaser.join(timeout=30)
        shut(self._db)  # returns once the connection is closed, whatever state it was in


class _WriteCache:
    """The latest encoded value (None: deleted) of recently written keys, bounded LRU."""

    def __init__(self, size: int):
        self._size = size
        self._values: OrderedDict[str, bytes | None] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, value: bytes | None) -> None:
        self.put_many({key: value})

    def put_many(self, writes: dict[str, bytes | None]) -> None:
        with self._lock:
            values = self._values
            for key, value in writes.items():
                values[key] = value
                values.move_to_end(key)
            while len(values) > self._size:
                values.popitem(last=False)

    def get(self, key: str) -> tuple[bool, bytes | None]:
        with self._lock:
            if key in self._values:
                return True, self._values[key]
        return False, None


class Namespace:
    """One table: `get / put / delete / list(prefix)` on msgspec-encoded values."""

    def __init__(self, store: StateStore, name: str):
        self.store = store
        self.name = name
        self.cache: _WriteCache | None = None
        self._get_sql = f'SELECT value FROM "{name}" WHERE key = ?'
        self._list_sql = f'SELECT key, value FROM "{name}" WHERE key >= ? AND key < ? ORDER BY key'

    def get(self, key: str, type: type[T] | Any = Any) -> T | None:
        found, value = self.store._buffered(self.name, key)
        if not found and self.cache is not None:
            found, value = self.cache.get(key)
        if not found:
            found, value = self.store._pending_value(self.name, key)
        if found:
            return None if value is None else _decoder(type).decode(value)
        rows = self.store._select(self._get_sql, (key,))
        return _decoder(type).decode(rows[0][0]) if rows else None

    def put(self, key: str, value: Any) -> int:
        """Queue the write; returns its sequence number for the output gate."""
        return self.store._write(self.name, key, _ENCODER.encode(value))

    def delete(self, key: str) -> int:
        return self.store._write(self.name, key, None)

    def list(
        self,
        prefix: str = "",
        type: Any = Any,
        *,
        start: str | None = None,
        end: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Any]]:
        """Entries whose key starts with `prefix` (and lies in [start, end)), in key order."""
        lo = max(prefix, start) if start is not None else prefix
        hi = _prefix_end(prefix) if prefix else "\U0010ffff"
        if end is not None:
            hi = min(hi, end)
        sql = self._list_sql + (f" LIMIT {int(limit)}" if limit is not None else "")
        dec = _decoder(type)
        return [(k, dec.decode(v)) for k, v in self.store._select(sql, (lo, hi), drain=True)]
