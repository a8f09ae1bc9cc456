"""Secrets and files: each secret redacted on its own, aiohttp's protocol errors in the JSON
shape (and without the client's bytes in the log), private files, and a bad WEBHOOK_SECRET
refused before "serving on" with one line naming it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_procs import MAIN, ROOT, Child, child_env, free_port

from genqueue.config import load_config, secret_values
from genqueue.log import setup_logging

ALICE_KEY = "alice-key-0123456789abcdef"
ADMIN_KEY = "admin-key-fedcba9876543210"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VEO_KEY = "veo-key-AIzaSyD-0123456789"
AWS_SECRET = "aws-secret-wJalrXUtnFEMI/K7MDENG"
KEYS = f"{ALICE_KEY}=alice,{ADMIN_KEY}=ops:admin"


def test_each_secret_is_redacted_on_its_own() -> None:
    env = {
        "GENQUEUE_API_KEYS": KEYS,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "VEO3_API_KEY": VEO_KEY,
        "VERTEX_ACCESS_TOKEN": "ya29.vertex-token-0123456789",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    }
    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("DEBUG", secrets=secret_values(load_config(env=env)), stream=out)
        log = logging.getLogger("genqueue.test")
        for value in env.values():
            log.warning("header X-Long: %s-and-more", value)
        log.warning("each key alone: %s and %s", ALICE_KEY, ADMIN_KEY)
        log.warning("the base64 body of the webhook secret: %s", WEBHOOK_SECRET[6:])
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    text = out.getvalue()
    assert text.count("***") >= 8, text
    for secret in (ALICE_KEY, ADMIN_KEY, WEBHOOK_SECRET[6:], VEO_KEY, AWS_SECRET, "vertex-token"):
        assert secret not in text, (secret, text)


async def _raw(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


def test_unparsable_requests_get_the_json_error_shape_and_leave_no_key_in_the_log(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = child_env(GENQUEUE_API_KEYS=KEYS, WEBHOOK_SECRET=WEBHOOK_SECRET)
    env["GENQUEUE_LOG_LEVEL"] = "DEBUG"
    args = [MAIN, "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")]
    serve = Child(args, tmp_path, "serve", env).start()
    try:
        serve.wait_http(f"http://127.0.0.1:{port}/healthz")
        pad = b"b" * 9000
        requests = [
            b"GET /api/generations?" + ALICE_KEY.encode() + pad + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + ADMIN_KEY.encode() + pad + b"\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ALICE_KEY.encode() + pad
            + b"\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n" + ADMIN_KEY.encode() + b" no colon\r\n\r\n",
        ]  # fmt: skip
        for raw in requests:
            status, headers, body = asyncio.run(_raw(port, raw))
            assert status.split()[1] == "400", (status, body)
            assert headers["content-type"].startswith("application/json"), headers
            error = json.loads(body)["error"]
            assert error["code"] == "invalid_request" and "too long" in error["message"]
            assert ALICE_KEY.encode() not in body and ADMIN_KEY.encode() not in body
    finally:
        assert serve.stop() == 0
    logs = serve.out_path.read_text() + serve.err_path.read_text()
    assert "unparsable HTTP request refused" in logs and "Traceback" not in logs
    assert ALICE_KEY not in logs and ADMIN_KEY not in logs


@pytest.mark.parametrize(
    "secret", ["not-a-whsec-secret", "whsec_!!!not base64!!!", "whsec_"], ids=str
)
def test_a_bad_webhook_secret_stops_serve_with_one_line_naming_it(
    tmp_path: Path, secret: str
) -> None:
    env = child_env(WEBHOOK_SECRET=secret, WEBHOOK_URL="http://127.0.0.1:9/hook")
    args = [MAIN, "serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "d")]
    result = subprocess.run(
        [sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "WEBHOOK_SECRET" in lines[0], result.stderr
    assert "serving on" not in result.stdout and "Traceback" not in result.stderr
    if secret != "whsec_":
        assert secret.removeprefix("whsec_") not in result.stderr  # never quoted


def test_serve_keeps_its_files_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    args = [MAIN, "serve", "--port", str(port), "--data-dir", str(data)]
    serve = Child(args, tmp_path, "serve", child_env()).start()
    try:
        serve.wait_http(f"http://127.0.0.1:{port}/healthz")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir() if p.is_file()}
    finally:
        serve.stop()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    expected = {"state.db", "state.db-wal", "state.db-shm", "admin_key", "video_url.key"}
    assert expected <= set(modes), modes
    assert all(mode == 0o600 for mode in modes.values()), modes
