"""Fixtures shared by several test modules."""

from __future__ import annotations

import gc
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator

import pytest

_MOTO_CHILD = """
import sys
from moto.server import ThreadedMotoServer

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the test module closes our stdin
server.stop()
"""


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 endpoint over HTTP: moto's server, in a child process (it keeps objects in
    memory, which would skew the tests' tracemalloc figures if it ran in this one)."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", _MOTO_CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert child.stdin is not None and child.stdout is not None
    try:
        port = child.stdout.readline().strip()
        if not port:
            pytest.fail(f"moto server did not start:\n{log.read_text()[-3000:]}")
        yield f"http://127.0.0.1:{int(port)}"
    finally:
        child.stdin.close()
        child.stdout.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def open_sqlite_connections() -> list[sqlite3.Connection]:
    """Every `sqlite3.Connection` in this process that is not closed, reachable or not
    (garbage the collector has not reached yet is still listed)."""
    found = []
    for obj in gc.get_objects():
        if isinstance(obj, sqlite3.Connection):
            try:
                obj.in_transaction  # noqa: B018 (raises once closed)
            except sqlite3.ProgrammingError as exc:
                if "closed" in str(exc):
                    continue
            found.append(obj)
    return found


def sqlite_fds() -> list[str]:
    """The files this process holds open that belong to an SQLite database (read from
    Linux's /proc; an empty list where there is none)."""
    names = []
    for fd in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed already
            continue
        if target.endswith((".db", ".db-wal", ".db-shm", ".db-journal")):
            names.append(target)
    return names


@pytest.fixture(autouse=True)
def sqlite_files_closed() -> Iterator[None]:
    """Every test: the SQLite files it opened are closed when it ends (a store that outlives
    its test, or a connection left to the collector, holds them). Cheap: /proc only."""
    before = sorted(sqlite_fds())
    yield
    left = sorted(sqlite_fds())
    assert left == before, f"SQLite files left open: {sorted(set(left) - set(before))}"


@pytest.fixture
def sqlite_closed() -> Iterator[None]:
    """Fails a test that leaves an SQLite connection open, reachable or not.

    Python 3.13 warns about an unclosed connection only when the collector frees it, which
    may be in a later test; and Python 3.11 never warns. So this looks for open connections
    itself, on either Python, then collects: on 3.13 a connection freed unclosed raises its
    ResourceWarning here, as an error, in the test that leaked it. (It walks every object:
    ~0.1 s a test, so the storage tests use it; `sqlite_files_closed` guards every test.)"""
    before = {id(conn) for conn in open_sqlite_connections()}
    yield
    left = [repr(conn) for conn in open_sqlite_connections() if id(conn) not in before]
    gc.collect()
    assert not left, f"SQLite connections left open: {left}"
