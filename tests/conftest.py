"""Fixtures and helpers shared by the test modules: `run` (a coroutine, with a deadline)
and `eventually` / `aeventually` (for state that raises no event: look again until it
holds, or fail naming what was awaited). Tests wait on events where there are events."""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import settings

# The same examples on every run, so CI is deterministic (a flaky run is a bug); set
# GENQUEUE_HYPOTHESIS=explore to search with fresh random examples while developing.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile("explore" if os.environ.get("GENQUEUE_HYPOTHESIS") == "explore" else "ci")

T = TypeVar("T")
WAIT_S = 20.0  # the longest one wait may take before the test fails


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
    """Run `coro` on a new event loop; fail if it takes longer than `timeout_s`."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def eventually(check: Callable[[], bool], what: str = "", timeout_s: float = WAIT_S) -> None:
    """For state that raises no event (an actor's alarm, a deleted row): look again."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or 'the condition'}")
        time.sleep(0.002)


async def aeventually(
    check: Callable[[], bool | Awaitable[bool]], what: str = "", timeout_s: float = 10.0
) -> None:
    """`eventually` on the event loop (`check` may be a coroutine function)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        held = check()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        assert loop.time() < deadline, f"timed out waiting for {what or 'the condition'}"
        await asyncio.sleep(0.005)


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
