"""The fault suite's real parts, each its own process on loopback, and waits with deadlines.

- `FakeVeoProc`: `main.py fake-veo`, steered over HTTP (`GET /_fake/stats`,
  `POST /_fake/faults`, see genqueue/providers/fake_veo.py);
- `Receiver`: tests/fault_receiver.py, which verifies every webhook with `standardwebhooks`
  and keeps what it got in a file, so it can be stopped (down: connection refused) and
  started again on the same port;
- `Server`: `main.py serve` on its own data directory, configured by the environment
  (DESIGN.md names) and, for settings with no environment name, a TOML file (`--config`);
- S3 through moto's server mode (the `moto_endpoint` fixture in conftest.py), read back
  with botocore to check what the server stored.

Every wait has a deadline and says what it waited for (`eventually`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Collection, Coroutine
from pathlib import Path
from typing import IO, Any

import aiohttp
import botocore.session

from genqueue import TERMINAL
from genqueue.config import ENV_NAMES
from genqueue.providers.fake_veo.video import clip

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "main.py")
RECEIVER = str(Path(__file__).resolve().parent / "fault_receiver.py")

API_KEY, USER = "fault-key", "fault-user"
ADMIN_KEY = "fault-admin-key"
SECRET = "whsec_" + base64.b64encode(b"fault-suite-webhook-secret-32byt").decode()
FAST_WEBHOOK_RETRY_S = "0,0.1,0.2,0.3,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """This environment without any genqueue / Veo / webhook / AWS setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env.pop("GENQUEUE_URL", None)
    env.pop("GENQUEUE_KEY", None)
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


class Child:
    """A child process whose stdout and stderr go to `{name}.out` / `{name}.err` in `logs`."""

    def __init__(self, args: list[str], logs: Path, name: str, env: dict[str, str]):
        self.args, self.name, self.env = args, name, env
        self.out_path, self.err_path = logs / f"{name}.out", logs / f"{name}.err"
        self.proc: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []

    def start(self) -> Child:
        out, err = open(self.out_path, "ab"), open(self.err_path, "ab")  # noqa: SIM115
        self._files = [out, err]
        self.proc = subprocess.Popen(
            [sys.executable, *self.args], env=self.env, cwd=ROOT, stdout=out, stderr=err
        )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        text = self.err_path.read_text(errors="replace") if self.err_path.exists() else ""
        last = "\n".join(text.splitlines()[-lines:])
        return f"\n--- {self.name} stderr (last {lines} lines) ---\n{last}"

    def sigkill(self) -> None:
        """SIGKILL, as a crash: nothing of the process runs after it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._close_files()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL if it lingers `timeout_s`; the exit code (None if never
        started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._close_files()
        return self.proc.returncode

    def _close_files(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    def wait_http(self, url: str, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until `url` answers 200; fails at once if the child exits, or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited {self.proc.returncode} before {url} answered" + self.tail()
                )
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {url} not ready in {timeout_s} s" + self.tail())
            time.sleep(0.03)


async def eventually(
    check: Callable[[], Awaitable[tuple[bool, Any]]],
    what: str,
    timeout_s: float,
    interval_s: float = 0.05,
) -> Any:
    """Call `check` until it answers (True, value); value. Fails naming `what` and the last
    value seen when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, value = await check()
        if done:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}; last seen: {value!r:.2000}")
        await asyncio.sleep(interval_s)


async def get_json(session: aiohttp.ClientSession, url: str, **kw: Any) -> Any:
    kw.setdefault("timeout", aiohttp.ClientTimeout(total=10))
    async with session.get(url, **kw) as resp:
        assert resp.status == 200, (url, resp.status, await resp.text())
        return await resp.json()


# -- the fake Veo and the webhook receiver --------------------------------------------------------


class FakeVeoProc:
    """`main.py fake-veo` on a free port."""

    def __init__(
        self,
        logs: Path,
        *,
        latency_s: float = 0.3,
        video_size: int = 256 * 1024,
        extra_args: tuple[str, ...] = (),
    ):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.video_size = video_size
        args = [MAIN, "fake-veo", "--port", str(port), "--latency-s", str(latency_s)]
        args += ["--video-size", str(video_size), *extra_args]
        self.child = Child(args, logs, "fake-veo", child_env())

    def start(self) -> FakeVeoProc:
        self.child.start().wait_http(f"{self.url}/_fake/stats")
        return self

    def stop(self) -> None:
        self.child.stop()

    async def faults(self, session: aiohttp.ClientSession, **controls: Any) -> dict[str, Any]:
        """Arm fault controls (the body of `POST /_fake/faults`); the controls now armed."""
        async with session.post(f"{self.url}/_fake/faults", json=controls) as resp:
            assert resp.status == 200, await resp.text()
            armed: dict[str, Any] = (await resp.json())["faults"]
            return armed

    async def stats(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        stats: dict[str, Any] = await get_json(session, f"{self.url}/_fake/stats")
        return stats

    async def ops(self, session: aiohttp.ClientSession, prompt: str) -> list[dict[str, Any]]:
        """The operations started for `prompt`, oldest first."""
        ops = [op for op in (await self.stats(session))["operations"] if op["prompt"] == prompt]
        return sorted(ops, key=lambda op: op["startedAt"])


class Receiver:
    """tests/fault_receiver.py; `stop()` takes it down, `start()` brings it back on its port."""

    def __init__(self, logs: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.hook_url = f"{self.url}/hook"
        self.log = logs / f"receiver-{self.port}.jsonl"
        self.child = Child(
            [RECEIVER, str(self.port), SECRET, str(self.log)], logs, "receiver", child_env()
        )

    def start(self) -> Receiver:
        self.child.start().wait_http(f"{self.url}/received")
        return self

    def stop(self) -> None:
        self.child.stop()

    async def received(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        got: dict[str, Any] = await get_json(session, f"{self.url}/received")
        return got

    async def events_for(
        self, session: aiohttp.ClientSession, job_ids: set[str], events: set[str], timeout_s: float
    ) -> dict[str, list[dict[str, Any]]]:
        """Waits until each job has a delivery of one of `events`; every delivery by job."""

        async def check() -> tuple[bool, Any]:
            got = await self.received(session)
            assert got["rejected"] == 0, "the receiver rejected a signature"
            by_job: dict[str, list[dict[str, Any]]] = {j: [] for j in job_ids}
            for d in got["deliveries"]:
                if d["jobId"] in by_job:
                    by_job[d["jobId"]].append(d)
            missing = {j for j, ds in by_job.items() if not any(d["event"] in events for d in ds)}
            return not missing, by_job if not missing else sorted(missing)

        result: dict[str, list[dict[str, Any]]] = await eventually(
            check, f"webhooks {sorted(events)} for {len(job_ids)} jobs", timeout_s
        )
        return result


# -- the server ---------------------------------------------------------------------------------


def s3_env(endpoint: str, bucket: str) -> dict[str, str]:
    return {
        "GENQUEUE_STORAGE": "s3",
        "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": endpoint,
        **S3_CREDENTIALS,
    }


class Server:
    """`main.py serve` on a free port. `env` adds to the suite's defaults (the fake Veo, the
    receiver, fast polls and webhook retries); `config` becomes a TOML file for settings that
    have no environment name (e.g. `retry_backoff_s`, `max_retries`)."""

    def __init__(
        self,
        logs: Path,
        name: str,
        *,
        fake: FakeVeoProc,
        receiver: Receiver,
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir or logs / f"{name}-data"
        base = {
            "GENQUEUE_API_KEYS": f"{API_KEY}={USER},{ADMIN_KEY}=ops:admin",
            "VEO3_API_KEY": "dummy-veo-key",
            "VEO3_BASE_URL": fake.url,
            "GENQUEUE_POLL_INTERVAL_S": "0.05",
            "WEBHOOK_URL": receiver.hook_url,
            "WEBHOOK_SECRET": SECRET,
            "GENQUEUE_WEBHOOK_RETRY_S": FAST_WEBHOOK_RETRY_S,
        }
        args = [MAIN, "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        if config:
            toml = logs / f"{name}.toml"
            toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
            args += ["--config", str(toml)]
        self.child = Child(args, logs, name, child_env(**(base | (env or {}))))

    def start(self) -> Server:
        self.child.start().wait_http(f"{self.url}/healthz")
        return self

    def stop(self) -> int | None:
        return self.child.stop()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def api(self, session: aiohttp.ClientSession, key: str = API_KEY) -> Api:
        return Api(session, self.url, key, self.child)


class Api:
    """The HTTP API of one server, as one client (its key) sees it."""

    def __init__(self, session: aiohttp.ClientSession, url: str, key: str, child: Child):
        self.session, self.url, self.child = session, url, child
        self.headers = {"Authorization": f"Bearer {key}"}

    async def call(
        self, method: str, path: str, *, json: Any = None, data: Any = None, timeout_s: float = 10
    ) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self.session.request(
            method, self.url + path, json=json, data=data, headers=self.headers, timeout=timeout
        ) as resp:
            text = await resp.text()
            try:
                return resp.status, (await resp.json(content_type=None)) if text else None
            except ValueError:
                return resp.status, text

    async def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST the job; it must be acknowledged (202)."""
        status, job = await self.call("POST", "/api/generations", json=body)
        assert status == 202, (status, job)
        assert isinstance(job, dict)
        return job

    async def job(self, job_id: str) -> dict[str, Any]:
        status, job = await self.call("GET", f"/api/generations/{job_id}")
        assert status == 200, (job_id, status, job)
        assert isinstance(job, dict)
        return job

    async def wait_job(
        self, job_id: str, timeout_s: float, statuses: Collection[str] = TERMINAL
    ) -> dict[str, Any]:
        """The job once its status is one of `statuses`."""

        async def check() -> tuple[bool, Any]:
            job = await self.job(job_id)
            return job["status"] in statuses, job

        try:
            job: dict[str, Any] = await eventually(
                check, f"job {job_id} {'|'.join(statuses)}", timeout_s
            )
        except AssertionError as exc:
            raise AssertionError(str(exc) + self.child.tail()) from None
        return job

    async def wait_all(
        self, job_ids: list[str], timeout_s: float, statuses: Collection[str] = TERMINAL
    ) -> dict[str, dict[str, Any]]:
        jobs = await asyncio.gather(*(self.wait_job(j, timeout_s, statuses) for j in job_ids))
        return dict(zip(job_ids, jobs, strict=True))

    async def queue_status(self) -> dict[str, Any]:
        status, body = await self.call("GET", "/api/queue/status")
        assert status == 200, body
        assert isinstance(body, dict)
        return body


# -- S3 (moto) ---------------------------------------------------------------------------------


def _s3(endpoint: str) -> Any:
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_CREDENTIALS["AWS_REGION"],
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def make_bucket(endpoint: str, bucket: str) -> None:
    _s3(endpoint).create_bucket(Bucket=bucket)


async def s3_objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    """Every object in the bucket, by key (moto, read directly: no proxy, no server)."""

    def read() -> dict[str, bytes]:
        client = _s3(endpoint)
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
        return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}

    return await asyncio.to_thread(read)


def video_key(job: dict[str, Any]) -> str:
    """The store key of a completed job's video, from its URL (names are random tokens)."""
    path = urllib.parse.urlsplit(job["result"]["videoUrl"]).path
    return path[path.index("/videos/") + 1 :]


def assert_whole_video(body: bytes | None, size: int, what: str) -> None:
    """The fake's MP4, whole: its size, the playable clip (ftyp, moov, mdat), then padding."""
    assert body is not None, f"{what}: no object stored"
    assert len(body) == size, f"{what}: {len(body)} bytes stored, the video has {size}"
    assert body.startswith(clip()), f"{what}: not the fake's MP4"


def urlopen_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def run(server: Server, scenario: Any, timeout_s: float = 50) -> Any:
    """Run `scenario(api, session)` with a fresh client session, within `timeout_s`."""

    async def main() -> Any:
        async with aiohttp.ClientSession() as session:
            coro: Coroutine[Any, Any, Any] = scenario(server.api(session), session)
            return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(main())
