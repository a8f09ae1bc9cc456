"""Fixtures shared by several test modules."""

from __future__ import annotations

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
