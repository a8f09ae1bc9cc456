"""sqlitedict's file with its one connection closed on every way out (issue 16).

sqlitedict (2.1) keeps each `SqliteDict`'s connection on a worker thread, and closes it
only when asked to. Every other way out leaves it to the garbage collector (Python 3.13
then warns "unclosed database"), holding its file descriptors until the collector runs:
- a commit refused by the disk (full, read-only, an I/O error) raises out of the worker's
  loop and ends the thread;
- a set-up PRAGMA that fails (a file that is no database, a lock) ends it too;
- a constructor that fails after the worker started (its first CREATE TABLE) leaves the
  worker waiting, alive, until the half-built object is collected;
- `close(force=True)` (sqlitedict's only close that cannot hang on a dead worker) only
  queues the close: the connection is still open when it returns.
A store that reopens after each disk fault would leak a connection each time.

`SqliteFile` is a `SqliteDict` whose worker (`Worker`) closes its connection however its
loop ends and keeps what ended it (`Worker.death`, also logged) instead of letting it
escape the thread; `shut(file)` returns only once the connection is closed. The worker
also sets `synchronous` as it opens the connection, where sqlitedict would set OFF.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from typing import Any

from sqlitedict import SqliteDict, SqliteMultithread

__all__ = ["SqliteFile", "Worker", "shut"]

log = logging.getLogger("genqueue.state")


class Worker(SqliteMultithread):
    """sqlitedict's worker thread, closing its connection on every way out."""

    def __init__(self, filename: str, *, journal_mode: str, synchronous: str) -> None:
        # Set before the base class starts the thread (its constructor does).
        self.synchronous = synchronous
        self.connection: sqlite3.Connection | None = None
        self.death: BaseException | None = None  # what ended the loop, if not a close
        self._open_failed = False
        super().__init__(filename, False, journal_mode, outer_stack=False)

    def _connect(self) -> tuple[sqlite3.Connection, sqlite3.Cursor]:
        """sqlitedict's own set-up (autocommit off), but a connection whose set-up fails is
        closed before the failure is reported."""
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
        except BaseException as exc:  # a refused commit, or a request it could not read
            self.death = exc
        if self.connection is not None:
            try:
                self.connection.close()  # rolls back a transaction left open
            except sqlite3.Error:
                log.exception("closing the SQLite connection failed")
        if self.death is not None and not self._open_failed:
            log.error("the SQLite worker stopped: %r", self.death, exc_info=self.death)


class SqliteFile(SqliteDict):
    """One table of an SQLite file, through a `Worker`; WAL, autocommit off, no pickle."""

    def __init__(
        self,
        filename: str,
        *,
        tablename: str,
        synchronous: str,
        encode: Any,
        decode: Any,
    ) -> None:
        self._synchronous = synchronous
        try:
            super().__init__(
                filename,
                tablename=tablename,
                journal_mode="WAL",
                autocommit=False,
                encode=encode,
                decode=decode,
                outer_stack=False,  # a stack captured per call costs 5x (measured-facts.md)
            )
        except BaseException:
            shut(self)
            raise

    def _new_conn(self) -> Worker:
        return Worker(self.filename, journal_mode=self.journal_mode, synchronous=self._synchronous)


def shut(file: SqliteDict, timeout_s: float = 30.0) -> None:
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
