"""Connection limits of `main.py serve` (issue 12, item 8), with raw sockets on loopback.

A real server process with short configured limits: a request head that does not arrive
in time (slowloris) is cut off, a slow body gets a 408 and a close, and connections past
GENQUEUE_MAX_CONNECTIONS get a 503 at once. (The per-key stream cap and the body deadline
are also tested in-process, in test_http.py.)
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import Serve, free_port

KEY = "k-conn-5e1d"
DEADLINE_S = 10.0  # far above the configured limits, far below aiohttp's defaults (75 s)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    return sock


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a timeout fails the test)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def closed_by_server(sock: socket.socket, trickle: bytes, every_s: float) -> float:
    """Send `trickle` every `every_s` while waiting (select) for the server to close;
    return how long it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < DEADLINE_S:
        readable, _, _ = select.select([sock], [], [], every_s)
        if readable:
            try:
                if sock.recv(65536) == b"":
                    return time.monotonic() - t0
            except ConnectionResetError:
                return time.monotonic() - t0
        try:
            sock.sendall(trickle)
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - t0
    raise AssertionError(f"the server kept the connection over {DEADLINE_S} s")


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    root = tmp_path_factory.mktemp("strict")
    env = {
        "GENQUEUE_API_KEYS": f"{KEY}=alice",
        "GENQUEUE_HEADER_TIMEOUT_S": "0.5",
        "GENQUEUE_BODY_TIMEOUT_S": "0.5",
    }
    with Serve(root / "data", free_port(), **env) as server:
        yield server


def test_a_half_sent_request_head_is_cut_off(strict: Serve) -> None:
    with connect(strict.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        took = closed_by_server(sock, b"X-Slow: 1\r\n", every_s=0.05)  # slowloris
    assert took < 5.0
    # An idle keep-alive connection goes the same way after its response.
    with connect(strict.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert closed_by_server(sock, b"", every_s=0.05) < 5.0


def test_a_slow_body_gets_a_408_and_a_close(strict: Serve) -> None:
    with connect(strict.port) as sock:
        sock.sendall(
            b"POST /api/generations HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
            b'{"prompt": "a'
        )
        answer = read_to_eof(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_connections_past_the_cap_get_a_503_at_once(tmp_path: Path) -> None:
    env = {"GENQUEUE_API_KEYS": f"{KEY}=alice", "GENQUEUE_MAX_CONNECTIONS": "3"}
    with Serve(tmp_path / "data", free_port(), **env) as server:
        held = [connect(server.port) for _ in range(3)]
        try:
            for sock in held:  # answered: each is a connection the server holds
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            with connect(server.port) as extra:
                answer = read_to_eof(extra)  # refused before it sent anything
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503"), answer
            assert json.loads(body)["error"]["code"] == "too_many_connections"
            held.pop().close()
            deadline = time.monotonic() + DEADLINE_S
            while True:  # once the server saw it go, there is room for one more
                with (
                    connect(server.port) as sock,
                    contextlib.suppress(ConnectionResetError, BrokenPipeError),
                ):
                    # (a refusal closes at once: the request sent may meet a reset)
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if read_to_eof(sock).startswith(b"HTTP/1.1 200"):
                        break
                assert time.monotonic() < deadline, "no room after a connection closed"
                time.sleep(0.02)  # a polling interval, as helpers_queue.poll_until
        finally:
            for sock in held:
                sock.close()
