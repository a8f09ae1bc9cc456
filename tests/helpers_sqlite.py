"""Shared by the storage tests: real ways to end the SQLite worker, and a closed check."""

from __future__ import annotations

import sqlite3

import pytest

from genqueue.storage.sqlitedict_adapter import Reply, SqliteConnection, WorkerEnded

ROWS_THEN_ERROR = (
    "SELECT CASE WHEN x = 2 THEN abs(-9223372036854775808) ELSE x END"
    " FROM (SELECT 1 AS x UNION ALL SELECT 2 UNION ALL SELECT 3)"
)
"""A query whose error comes while its rows are stepped (abs() overflows on the second
row), as an I/O error met mid-scan would: sqlitedict steps rows outside its error
handling, so the worker's thread ends."""


def end_the_worker(conn: SqliteConnection) -> None:
    """End the worker's thread by a read that fails mid-result."""
    reply = Reply()
    conn.execute(ROWS_THEN_ERROR, (), reply)
    with pytest.raises(WorkerEnded, match="integer overflow"):
        conn.answer(reply, timeout_s=10)
    assert not conn.is_alive()


def is_closed(conn: sqlite3.Connection) -> bool:
    """`conn` is closed (a closed connection raises on any use)."""
    try:
        conn.in_transaction  # noqa: B018 (raises once closed)
    except sqlite3.ProgrammingError:
        return True
    return False
