"""The command line never prints a control character it was sent (issue 12, item 7).

A hostile user's prompt (or a server that was tampered with) must not drive an admin's
terminal: ESC sequences retitle the window or rewrite the screen, BEL rings, C1's CSI
(U+009B) starts a sequence on its own, and bidi overrides reorder what is shown. A stand-in
server on loopback answers every client command with such bytes in every field; the real
`python main.py` prints them escaped.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_cli import cli

EVIL = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202egnp.exe\x00\r\x08\t"
# What a terminal could act on (newlines end our own lines and are checked apart).
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _job(status: str) -> dict[str, object]:
    return {
        "id": "job-1",
        "status": status,
        "progress": 100,
        "prompt": "a fox" + EVIL,
        "error": "failed" + EVIL,
        "result": {"videoUrl": "http://127.0.0.1/v.mp4" + EVIL},
    }


class Hostile(BaseHTTPRequestHandler):
    """Answers the client commands with control characters in every string."""

    def _send(self, status: int, body: object) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        if self.path.startswith("/api/queue/status"):
            self._send(200, {"queued" + EVIL: 1, "dispatch": "alarm" + EVIL})
        elif self.path.startswith("/api/generations/"):
            self._send(200, _job("failed"))
        elif self.path.startswith("/api/generations"):
            self._send(200, {"items": [_job("queued")], "nextCursor": "1" + EVIL})
        else:
            self._send(404, {"error": {"code": "not_found", "message": "no" + EVIL}})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "evil-error" in self.headers.get("Authorization", ""):
            self._send(400, {"error": {"code": "x", "message": "bad" + EVIL, "field": EVIL}})
        else:
            self._send(202, {**_job("queued"), "status": "queued" + EVIL})

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def hostile_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def assert_escaped(text: str) -> None:
    assert not CONTROL.search(text), repr(text)
    assert "\\x1b]0;owned\\x07" in text and "\\x9b" in text and "\\u202e" in text


@pytest.mark.parametrize(
    "args",
    [("jobs",), ("status",), ("submit", "a fox", "--wait")],
    ids=["jobs", "status", "submit-wait"],
)
def test_client_commands_print_control_characters_escaped(
    hostile_url: str, args: tuple[str, ...]
) -> None:
    result = cli(*args, GENQUEUE_URL=hostile_url, GENQUEUE_KEY="k")
    assert_escaped(result.stdout + result.stderr)


def test_an_error_message_from_the_server_is_printed_escaped(hostile_url: str) -> None:
    result = cli("submit", "a fox", GENQUEUE_URL=hostile_url, GENQUEUE_KEY="evil-error")
    assert result.returncode == 2
    assert not CONTROL.search(result.stdout + result.stderr), repr(result.stderr)
    assert "bad\\x1b]0;owned\\x07" in result.stderr
