"""The sqlitedict boundary: every use of sqlitedict's internals, behind `SqliteConnection`.

sqlitedict runs one SQLite connection on a worker thread (`SqliteMultithread`) fed by a
request queue. The state store drives that worker directly, not through the dict, and
relies on what sqlitedict 2.1.0 does inside (so pyproject.toml pins it exactly):
- requests run one at a time in the order sent; a statement sent without a reply queue
  is fire-and-forget;
- a statement's reply is its rows, then the end-of-answer sentinel (`_RESPONSE_NO_MORE`);
  the commit request (`_REQUEST_COMMIT`) commits everything sent before it, then answers
  that sentinel;
- a failed statement does not stop the worker: its error waits in one slot (`exception`)
  and is raised, once, by whichever thread next calls `execute` (which then does not
  queue its statement) or `check_raise_error`; later statements still run, and a later
  COMMIT commits them;
- a commit refused (disk full, read-only, a deferred constraint), or an error met while
  stepping a result's rows, raises out of the worker's loop and ends its thread: no
  answer comes to anyone waiting;
- its `_connect` sets `synchronous=OFF`; its values are pickled unless told otherwise.
tests/test_sqlitedict_adapter.py pins each of these: an upgrade that changes one fails there.

The connection is closed on every way out (issue 16). sqlitedict closes it only when
asked to; every other way out leaves it to the garbage collector (Python 3.13 then warns
"unclosed database"), holding its file descriptors until the collector runs:
- a commit refused by the disk ends the worker's thread (above);
- a set-up PRAGMA that fails (a file that is no database, a lock) ends it too;
- a constructor that fails after the worker started (its first CREATE TABLE) leaves the
  worker waiting, alive, until the half-built object is collected;
- `close(force=True)` (sqlitedict's only close that cannot hang on a dead worker) only
  queues the close: the connection is still open when it returns.
A store that reopens after each disk fault would leak a connection each time. So `_Worker`
closes its connection however its loop ends and keeps what ended it (`death`, also
logged) instead of letting it escape the thread, and `SqliteConnection.close()` returns
only once the connection is closed. The worker sets `synchronous` as it opens the
connection, and `SqliteConnection` reads it back.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any, Literal

from sqlitedict import _REQUEST_COMMIT, _RESPONSE_NO_MORE, SqliteDict, SqliteMultithread

from genqueue.errors import StorageError
from genqueue.storage import codec

__all__ = ["Reply", "SqliteConnection", "SyncLevel", "WorkerEnded"]

log = logging.getLogger("genqueue.state")

SyncLevel = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
SYNC_CODES: dict[str, int] = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}
"""What `PRAGMA synchronous` reads back for each level."""

Row = tuple[Any, ...]


class WorkerEnded(Exception):
    """The worker thread ended before it answered; `death` is what ended it, if known."""

    def __init__(self, death: BaseException | None) -> None:
        super().__init__(f"the SQLite worker ended{f': {death}' if death is not None else ''}")
        self.death = death


class Reply:
    """Where the worker answers one request: its rows, then the end of the answer.

    The worker holds only a weak reference to it: keep it until the answer is read."""

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: queue.Queue[Any] = queue.Queue()


class SqliteConnection:
    """One SQLite file on sqlitedict's worker thread: WAL, autocommit off, `synchronous` as
    asked (read back), statements run in the order sent."""

    def __init__(self, path: str, *, synchronous: SyncLevel, table: str = "meta") -> None:
        # sqlitedict's constructor creates `table`, the only use of its dict interface.
        self._file = _File(path, tablename=table, synchronous=synchronous)
        self._worker: _Worker = self._file.conn
        try:
            row = self.select_one("PRAGMA synchronous")  # check that it held
            if row is None or row[0] != SYNC_CODES[synchronous]:
                raise StorageError(f"could not set PRAGMA synchronous={synchronous} (got {row})")
        except BaseException:
            self.close()
            raise

    def execute(self, sql: str, args: Sequence[Any] = (), reply: Reply | None = None) -> None:
        """Queue `sql`; with `reply`, the worker answers there (`answer`). First raises the
        worker's pending error, if there is one: the statement is then not queued."""
        self._worker.execute(sql, args, None if reply is None else reply._rows)

    def commit(self, reply: Reply) -> None:
        """Queue a COMMIT of every statement sent before it; `reply` ends once it is done."""
        self._worker.execute(_REQUEST_COMMIT, None, reply._rows)

    def pending_error(self) -> bool:
        """Whether an earlier statement's error waits in the slot (`raise_error` takes it)."""
        return self._worker.exception is not None

    def raise_error(self) -> None:
        """Raise the error of an earlier statement, if one failed (only once: whichever
        thread calls first takes it)."""
        self._worker.check_raise_error()

    def answer(
        self, reply: Reply, *, timeout_s: float | None = None, poll_s: float = 0.1
    ) -> list[Row]:
        """The rows of `reply`, once the worker answered in full. Never hangs on a dead
        worker: raises `WorkerEnded` if it ended without answering, `TimeoutError` if no end
        came within `timeout_s` (None: no limit). The statement's own error, if it failed,
        is raised by the next `raise_error` or `execute`, not here."""
        rows: list[Row] = []
        get = reply._rows.get
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                row = get(timeout=poll_s)
            except queue.Empty:
                if not self._worker.is_alive():
                    if reply._rows.empty():  # its last puts came before it ended
                        raise WorkerEnded(self._worker.death) from None
                elif deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"no answer from the SQLite worker in {timeout_s} s"
                    ) from None
                continue
            if row == _RESPONSE_NO_MORE:
                return rows
            rows.append(row)

    def select_one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        """The first row of a query (None: no rows), raising its error or an earlier one."""
        reply = Reply()
        self.execute(sql, args, reply)
        rows = self.answer(reply)
        self.raise_error()
        return rows[0] if rows else None

    def is_alive(self) -> bool:
        """The worker thread runs (it ends on close, or on a failure it cannot go on from)."""
        return self._worker.is_alive()

    @property
    def death(self) -> BaseException | None:
        """What ended the worker's thread, if not a close."""
        return self._worker.death

    @property
    def closed(self) -> bool:
        """The worker's connection is closed (by `close`, or as its thread ended)."""
        return _is_closed(self._worker.connection)

    def close(self, timeout_s: float = 30.0) -> None:
        """Close the file; returns once the connection is closed (what was not committed is
        rolled back). Never raises the worker's errors, nor hangs on a dead worker."""
        _shut(self._file, timeout_s)


def _is_closed(conn: sqlite3.Connection | None) -> bool:
    if conn is None:
        return False
    try:
        conn.in_transaction  # noqa: B018 (raises once closed)
    except sqlite3.ProgrammingError:
        return True
    return False


class _Worker(SqliteMultithread):
    """sqlitedict's worker thread, setting `synchronous` and closing its connection on
    every way out."""

    def __init__(self, filename: str, *, journal_mode: str, synchronous: str) -> None:
        # Set before the base class starts the thread (its constructor does).
        self.synchronous = synchronous
        self.connection: sqlite3.Connection | None = None
        self.death: BaseException | None = None  # what ended the loop, if not a close
        self._open_failed = False
        super().__init__(filename, False, journal_mode, outer_stack=False)

    def _connect(self) -> tuple[sqlite3.Connection, sqlite3.Cursor]:
        """sqlitedict's own set-up (autocommit off) with our `synchronous`, but a connection
        whose set-up fails is closed before the failure is reported."""
        try:
            conn = sqlite3.connect(self.filename, check_same_thread=False)
        except Exception:
            self._open_failed = True
            self.exception = sys.exc_info()  # the caller's next call raises it
            raise
        self.connection = conn
        try:
            conn.execute(f"PRAGMA journal_mode = {self.journal_mode}")
            conn.text_factory = str
            cursor = conn.cursor()
            conn.commit()
            cursor.execute(f"PRAGMA synchronous={self.synchronous}")
        except Exception:
            self._open_failed = True
            conn.close()  # before the caller can see the error
            self.exception = sys.exc_info()
            raise
        return conn, cursor

    def run(self) -> None:
        try:
            super().run()
        except BaseException as exc:  # a refused commit, a result it could not step
            self.death = exc
        if self.connection is not None:
            try:
                self.connection.close()  # rolls back a transaction left open
            except sqlite3.Error:
                log.exception("closing the SQLite connection failed")
        if self.death is not None and not self._open_failed:
            log.error("the SQLite worker stopped: %r", self.death, exc_info=self.death)


class _File(SqliteDict):
    """sqlitedict's file through a `_Worker`: WAL, autocommit off, our codec (never pickle)."""

    def __init__(self, filename: str, *, tablename: str, synchronous: str) -> None:
        self._synchronous = synchronous
        try:
            super().__init__(
                filename,
                tablename=tablename,
                journal_mode="WAL",
                autocommit=False,
                encode=codec.encode,
                decode=codec.decoder(Any).decode,
                outer_stack=False,  # a stack captured per call costs 5x (measured-facts.md)
            )
        except BaseException:
            _shut(self)
            raise

    def _new_conn(self) -> _Worker:
        return _Worker(self.filename, journal_mode=self.journal_mode, synchronous=self._synchronous)


def _shut(file: SqliteDict, timeout_s: float = 30.0) -> None:
    """Close `file` and wait until its worker closed the connection (rolling back whatever
    was not committed). Never raises for the worker's errors, nor hangs on a dead worker."""
    worker = getattr(file, "conn", None)
    if worker is None:
        return
    # The close request queues behind the statements and commits already sent, like
    # sqlitedict's polite close, but without raising a pending error or waiting for an
    # answer that a dead worker would never send.
    file.close(force=True)
    worker.join(timeout_s)
    if worker.is_alive():
        log.error("the SQLite worker did not stop in %s s: its connection stays open", timeout_s)
