"""The fault suite (issue 7): a real `main.py serve` against a misbehaving world.

Every part is its own process on loopback (tests/helpers_procs.py): the fake Veo, steered
over `POST /_fake/faults`; moto's S3 server, behind `S3Gate`, a real HTTP proxy that can
refuse writes with 503 for a while; a webhook receiver verifying signatures with
`standardwebhooks`, which a test takes down and brings back. The faults:
- Veo: 429 storms with Retry-After, 5xx (JSON and a proxy's HTML page), hanging
  connections (cut by the job's watchdog, `GENQUEUE_JOB_TIMEOUT_S`), malformed JSON, a
  download cut half-way;
- S3 refusing writes for a while;
- the webhook receiver down for a long stretch (then every event arrives, verified), and
  down past the last attempt (dead-lettered, then replayed with the same webhook-id);
- the data directory turning read-only under the running server (an ext4 loop mount that
  the kernel remounts read-only on an error, as it does on a failing disk): new jobs get
  503, and none acknowledged is lost. Mounting needs root; without it that case skips.
Short polls, backoffs and webhook retries come from configuration; no test sleeps to wait
for something, and every wait has a deadline and says what it waited for.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from helpers_procs import (
    ADMIN_KEY,
    USER,
    Api,
    FakeVeoProc,
    Receiver,
    Server,
    assert_whole_video,
    eventually,
    free_port,
    make_bucket,
    run,
    s3_env,
    s3_objects,
    video_key,
)

FAKE_LATENCY_S = 0.3
JOB_TIMEOUT_S = 20.0  # a job's end, from its submission or the fault's end
HOOK_TIMEOUT_S = 10.0
BUCKET = "faults"
CONFIG = {"retry_backoff_s": 0.2, "max_retries": 3}  # TOML: no environment names for these

pytestmark = pytest.mark.timeout(60)


# -- S3 behind a gate ---------------------------------------------------------------------------

_S3_UNAVAILABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_HOP_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "content-encoding", "server"}
)


class S3Gate:
    """A real HTTP proxy in front of moto, on its own loop thread. While `refusing`, every
    write (PUT, POST) is answered 503 ServiceUnavailable, as S3 and R2 do when overloaded."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.refusing = False
        self.refused = 0
        self.writes = 0  # writes let through
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="s3-gate", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        write = request.method in ("PUT", "POST")
        if write and self.refusing:
            self.refused += 1
            return web.Response(status=503, body=_S3_UNAVAILABLE, content_type="application/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        assert self._session is not None
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_HEADERS}
        self.writes += write and resp.status < 300
        return web.Response(status=resp.status, body=data, headers=out)

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def start(self) -> S3Gate:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


# -- the processes ------------------------------------------------------------------------------


@dataclass
class World:
    logs: Path
    fake: FakeVeoProc
    receiver: Receiver
    s3: str  # moto itself, to read back what was stored
    gate: S3Gate  # what the servers use

    def server(self, name: str, **kw: Any) -> Server:
        env = s3_env(self.gate.url, BUCKET) | kw.pop("env", {})
        kw.setdefault("config", CONFIG)
        return Server(self.logs, name, fake=self.fake, receiver=self.receiver, env=env, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str) -> Iterator[World]:
    logs = tmp_path_factory.mktemp("faults")
    make_bucket(moto_endpoint, BUCKET)
    fake, receiver, gate = FakeVeoProc(logs, latency_s=FAKE_LATENCY_S), Receiver(logs), None
    try:
        gate = S3Gate(moto_endpoint).start()
        yield World(logs, fake.start(), receiver.start(), moto_endpoint, gate)
    finally:
        fake.stop()
        receiver.stop()
        if gate is not None:
            gate.stop()


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[Server]:
    with world.server("faults-serve") as srv:
        yield srv


@pytest.fixture(autouse=True)
def _calm(world: World) -> Iterator[None]:
    """Each test starts and ends with no fault armed, the receiver up and S3 open."""
    yield
    world.gate.refusing = False
    if not world.receiver.child.running:
        world.receiver.start()
    asyncio.run(_clear(world.fake))


async def _clear(fake: FakeVeoProc) -> None:
    async with aiohttp.ClientSession() as session:
        await fake.faults(session, clear=True)


async def submit_all(api: Api, ids: list[str], prompt: str) -> dict[str, str]:
    """Submit one job per id (prompt `f"{prompt} {id}"`); prompt by id."""
    prompts = {j: f"{prompt} {j}" for j in ids}
    await asyncio.gather(*(api.submit({"id": j, "prompt": p}) for j, p in prompts.items()))
    return prompts


async def assert_delivered(
    world: World, session: aiohttp.ClientSession, jobs: dict[str, dict[str, Any]]
) -> None:
    """Each job: completed, its whole video in S3 (moto), and exactly one completion event
    received and verified (redeliveries would share its webhook-id and bytes)."""
    assert {j: v["status"] for j, v in jobs.items()} == dict.fromkeys(jobs, "completed"), jobs
    stored = await s3_objects(world.s3, BUCKET)
    for job_id in jobs:
        assert_whole_video(stored.get(video_key(jobs[job_id])), world.fake.video_size, job_id)
    hooks = await world.receiver.events_for(
        session, set(jobs), {"generation.completed"}, HOOK_TIMEOUT_S
    )
    for job_id, deliveries in hooks.items():
        events = {(d["event"], d["id"], d["sha256"]) for d in deliveries}
        assert len(events) == 1, f"{job_id}: {events}"  # its completion, and nothing else
        end = deliveries[0]
        assert end["payload"]["result"]["videoUrl"] == jobs[job_id]["result"]["videoUrl"]


async def one_paid_start_each(
    world: World, session: aiohttp.ClientSession, prompts: dict[str, str]
) -> list[dict[str, Any]]:
    """The one operation each job's prompt started at the fake (failed calls were not paid)."""
    ops = []
    for job_id, prompt in prompts.items():
        mine = await world.fake.ops(session, prompt)
        assert len(mine) == 1, f"{job_id} started {len(mine)} operations: {mine}"
        ops.append(mine[0])
    return ops


def log_records(srv: Server) -> list[dict[str, Any]]:
    """The server's JSON log lines so far."""
    records = []
    for line in srv.child.err_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


def resumed(srv: Server, job_id: str) -> bool:
    """Whether the server's log shows the job resuming its stored operation (not a new one)."""
    return any(
        rec.get("event") == "generation started"
        and rec.get("job_id") == job_id
        and rec.get("resumed")
        for rec in log_records(srv)
    )


# -- Veo ----------------------------------------------------------------------------------------


def test_a_429_storm_with_retry_after_is_waited_out(world: World, server: Server) -> None:
    async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
        before = (await api.queue_status())["provider"]
        # More 429s than one attempt's retries (max_retries 3): the job itself is retried
        # too, and the queue pauses dispatch for Retry-After.
        await world.fake.faults(
            session,
            fail_starts={"status": 429, "count": 8, "retry_after_s": 0.1},
            fail_polls={"status": 429, "count": 3, "retry_after_s": 0.1},
        )
        prompts = await submit_all(api, [f"storm-{i}" for i in range(3)], "a 429 storm")
        jobs = await api.wait_all(list(prompts), JOB_TIMEOUT_S)
        await assert_delivered(world, session, jobs)
        await one_paid_start_each(world, session, prompts)
        armed = (await world.fake.stats(session))["faults"]
        assert armed["fail_starts"] == armed["fail_polls"] == 0, armed
        after = (await api.queue_status())["provider"]
        assert after["rateLimited"] - before["rateLimited"] == 11, (before, after)

    run(server, scenario)


def test_5xx_answers_to_start_poll_and_download_are_retried(world: World, server: Server) -> None:
    async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
        await world.fake.faults(
            session,
            fail_starts={"status": 500},
            fail_polls={"status": 502, "html": True},  # a load balancer's HTML page
            fail_downloads={"status": 503},
        )
        prompts = await submit_all(api, ["5xx-1"], "Veo answers 5xx")
        jobs = await api.wait_all(list(prompts), JOB_TIMEOUT_S)
        await assert_delivered(world, session, jobs)
        (op,) = await one_paid_start_each(world, session, prompts)
        assert op["downloads"] == 1 and op["polls"] >= 1, op
        assert jobs["5xx-1"]["attempts"] == 1  # retried inside the attempt
        armed = (await world.fake.stats(session))["faults"]
        assert armed["fail_starts"] == armed["fail_polls"] == armed["fail_downloads"] == 0

    run(server, scenario)


def test_malformed_json_answering_a_start_fails_it_as_ambiguous_never_paid_twice(
    world: World, server: Server
) -> None:
    """A start answered 200 with JSON cut short was accepted by Veo (the fake, like Google,
    started it): with VEO3_AMBIGUOUS_START=fail (the default) the job fails, and no second
    start is sent."""

    async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
        await world.fake.faults(session, malformed_json_next=True)
        prompts = await submit_all(api, ["malformed-1"], "Veo answers malformed JSON")
        jobs = await api.wait_all(list(prompts), JOB_TIMEOUT_S)
        job = jobs["malformed-1"]
        assert job["status"] == "failed" and "VEO3_AMBIGUOUS_START" in job["error"], job
        await one_paid_start_each(world, session, prompts)
        assert (await world.fake.stats(session))["faults"]["malformed_json_next"] is False
        assert (await api.queue_status())["provider"]["ambiguousStarts"] >= 1

    run(server, scenario)


def test_a_download_cut_half_way_is_downloaded_again_never_stored_half(
    world: World, server: Server
) -> None:
    async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
        await world.fake.faults(session, cut_downloads=1)
        prompts = await submit_all(api, ["cut-1"], "the download is cut")
        jobs = await api.wait_all(list(prompts), JOB_TIMEOUT_S)
        await assert_delivered(world, session, jobs)  # the whole video, not half of it
        (op,) = await one_paid_start_each(world, session, prompts)
        assert op["downloads"] == 2, op  # the cut one, then the whole one
        assert (await world.fake.stats(session))["faults"]["cut_downloads"] == 0

    run(server, scenario)


def test_hanging_connections_are_cut_by_the_watchdog_and_the_operation_resumed(
    world: World,
) -> None:
    """A start and a poll that never answer: the job's watchdog (GENQUEUE_JOB_TIMEOUT_S)
    ends the attempt, the job is retried, and the job whose start had answered resumes
    polling the same operation: one paid start each."""
    timeout_s = 2.5
    with world.server("faults-hang", env={"GENQUEUE_JOB_TIMEOUT_S": str(timeout_s)}) as srv:

        async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
            await world.fake.faults(session, hang_polls=True)
            polls = await submit_all(api, ["hang-poll"], "a poll hangs")

            async def started() -> tuple[bool, Any]:
                ops = await world.fake.ops(session, polls["hang-poll"])
                return len(ops) == 1, ops

            await eventually(started, "the hang-poll job's operation started", JOB_TIMEOUT_S)
            await world.fake.faults(session, hang_starts=True)
            starts = await submit_all(api, ["hang-start"], "a start hangs")

            async def retried() -> tuple[bool, Any]:
                jobs = [await api.job(j) for j in ("hang-poll", "hang-start")]
                return all(j["attempts"] >= 2 for j in jobs), jobs

            hung = await eventually(retried, "both jobs retried after a timeout", 3 * timeout_s)
            assert all(j["status"] in ("processing", "queued", "retry_wait") for j in hung), hung
            assert await world.fake.ops(session, starts["hang-start"]) == []  # never answered
            # The provider recovers: hanging requests answer 503 (retried), new ones work.
            await world.fake.faults(session, hang_starts=False, hang_polls=False, release=True)
            jobs = await api.wait_all(["hang-poll", "hang-start"], JOB_TIMEOUT_S)
            await assert_delivered(world, session, jobs)
            (op, _) = await one_paid_start_each(world, session, polls | starts)
            assert op["polls"] >= 1 and op["downloads"] == 1, op
            assert resumed(srv, "hang-poll"), "the retry did not resume the stored operation"

        run(srv, scenario)


# -- S3 -----------------------------------------------------------------------------------------


def test_s3_refusing_writes_for_a_while_delays_the_videos_and_loses_none(
    world: World, server: Server
) -> None:
    async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
        world.gate.refusing = True
        prompts = await submit_all(api, ["s3-1", "s3-2"], "S3 refuses writes")

        async def refused() -> tuple[bool, Any]:
            # botocore tries 3 times per upload; 8 refusals mean both jobs had an upload
            # fail as a whole at least once.
            return world.gate.refused >= 8, world.gate.refused

        await eventually(refused, "S3 refused 8 writes", JOB_TIMEOUT_S)

        async def uploads_failed() -> tuple[bool, Any]:
            # Each job's upload failed as a whole (botocore's own retries spent), and the
            # generation retries it.
            failed = {
                key
                for rec in log_records(server)
                if "storing the video failed" in str(rec.get("error"))
                for key in re.findall(rf"videos/{USER}/[0-9a-f]{{32}}\.mp4", str(rec["error"]))
            }  # the videos' names are random tokens: one failed upload per job
            return len(failed) == len(prompts), failed

        await eventually(uploads_failed, "both uploads failed and retried", JOB_TIMEOUT_S)
        during = {j: (await api.job(j))["status"] for j in prompts}
        assert set(during.values()) <= {"processing", "retry_wait", "queued"}, during
        world.gate.refusing = False
        jobs = await api.wait_all(list(prompts), JOB_TIMEOUT_S)
        await assert_delivered(world, session, jobs)
        await one_paid_start_each(world, session, prompts)  # retries re-download, never re-pay

    run(server, scenario)


# -- webhooks -----------------------------------------------------------------------------------


def test_the_webhook_receiver_down_for_a_long_stretch_gets_every_event_after(
    world: World, server: Server
) -> None:
    async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
        world.receiver.stop()  # connection refused from now on
        before = (await api.queue_status())["webhooks"]
        prompts = await submit_all(api, [f"hook-down-{i}" for i in range(3)], "receiver down")
        jobs = await api.wait_all(list(prompts), JOB_TIMEOUT_S)

        async def failing() -> tuple[bool, Any]:
            hooks = (await api.queue_status())["webhooks"]
            # Eight failed attempts for each of the three events: half the schedule (2.6 s).
            return hooks["failedAttempts"] - before["failedAttempts"] >= 24, hooks

        during = await eventually(failing, "24 failed webhook attempts", JOB_TIMEOUT_S)
        assert during["dead"] == before["dead"], during
        world.receiver.start()
        await assert_delivered(world, session, jobs)
        hooks = (await api.queue_status())["webhooks"]
        assert hooks["dead"] == before["dead"] and hooks["pending"] == 0, hooks

    run(server, scenario)


def test_a_webhook_dead_lettered_while_the_receiver_is_down_is_replayed_after(
    world: World,
) -> None:
    env = {"GENQUEUE_WEBHOOK_RETRY_S": "0,0.1,0.1"}  # three attempts, then dead-lettered
    with world.server("faults-dead", env=env) as srv:

        async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
            world.receiver.stop()
            prompts = await submit_all(api, ["dead-1"], "receiver down past the last attempt")
            jobs = await api.wait_all(list(prompts), JOB_TIMEOUT_S)
            admin = srv.api(session, ADMIN_KEY)

            async def dead() -> tuple[bool, Any]:
                status, page = await admin.call("GET", "/api/webhooks/dead")
                assert status == 200, page
                return len(page["items"]) == 1, page

            page = await eventually(dead, "the completion webhook dead-lettered", JOB_TIMEOUT_S)
            letter = page["items"][0]
            assert (letter["jobId"], letter["event"], letter["attempts"]) == (
                "dead-1",
                "generation.completed",
                3,
            ), letter
            world.receiver.start()
            status, replayed = await admin.call(
                "POST", f"/api/webhooks/{letter['id']}/replay", json={}
            )
            assert status == 202, replayed
            await assert_delivered(world, session, jobs)
            got = (await world.receiver.received(session))["deliveries"]
            assert [d["id"] for d in got if d["jobId"] == "dead-1"] == [letter["id"]]

        run(srv, scenario)


# -- the data directory turning read-only ---------------------------------------------------------


@contextlib.contextmanager
def ext4_mount(image: Path, path: Path, *, fresh: bool) -> Iterator[Path]:
    """`image` (a new 32 MB ext4 file system if `fresh`) loop-mounted at `path`, remounted
    read-only by the kernel on an error; yields the sysfs file that triggers one. Skips
    without root or loop devices."""
    if os.geteuid() != 0:
        pytest.skip("mounting a file system needs root")
    path.mkdir(parents=True, exist_ok=True)
    if fresh:
        subprocess.run(["truncate", "-s", "32M", str(image)], check=True)
        made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"cannot make an ext4 image: {made.stderr.strip()}")
    mount = ["mount", "-o", "loop,errors=remount-ro", str(image), str(path)]
    done = subprocess.run(mount, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image here: {done.stderr.strip()}")
    try:
        found = subprocess.run(
            ["findmnt", "-no", "SOURCE", str(path)], capture_output=True, text=True
        )
        trigger = Path("/sys/fs/ext4") / Path(found.stdout.strip()).name / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip(f"this kernel has no {trigger}")
        yield trigger
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@dataclass
class ReadOnlyRun:
    acked: list[str]  # acknowledged (202) before and after the fault
    answers: dict[str, int | str]  # late submissions: status, or "no answer in N s"
    healthz: int | str
    after: dict[str, dict[str, Any]]  # the acknowledged jobs after a restart, once terminal
    refused_after: dict[str, int]  # refused (503) jobs: status of GET after the restart


ANSWER_S = 3.0  # every request must answer within this, fault or not


@pytest.fixture(scope="module")
def read_only_run(world: World, tmp_path_factory: pytest.TempPathFactory) -> ReadOnlyRun:
    """Once for the two tests below: jobs in flight, the data directory's file system turns
    read-only, submissions go on; the server is stopped (SIGKILL if SIGTERM does not end it
    in 3 s), the disk mended (mounted again) and a new server started on the same data."""
    tmp = tmp_path_factory.mktemp("read-only")
    data, image = tmp / "data", tmp / "data.ext4"
    acked: list[str] = []
    answers: dict[str, int | str] = {}
    health: list[int | str] = []

    async def during(api: Api, session: aiohttp.ClientSession) -> None:
        await world.fake.faults(session, hang_polls=True)  # jobs stay in flight
        for i in range(4):
            await api.submit({"id": f"ro-before-{i}", "prompt": f"read-only {i}"})
            acked.append(f"ro-before-{i}")
        trigger.write_text("genqueue fault suite\n")  # the disk goes read-only
        for i in range(50):
            job_id = f"ro-late-{i}"
            body = {"id": job_id, "prompt": f"read-only {job_id}"}
            try:
                status, _ = await api.call(
                    "POST", "/api/generations", json=body, timeout_s=ANSWER_S
                )
            except TimeoutError:
                answers[job_id] = f"no answer in {ANSWER_S} s"
                break
            answers[job_id] = status
            if status == 202:
                acked.append(job_id)
            elif list(answers.values()).count(503) == 3:
                break
        try:
            status, _ = await api.call("GET", "/healthz", timeout_s=ANSWER_S)
            health.append(status)
        except TimeoutError:
            health.append(f"no answer in {ANSWER_S} s")

    with ext4_mount(image, data, fresh=True) as trigger:
        srv = world.server("faults-ro", data_dir=data)
        srv.start()
        try:
            run(srv, during, timeout_s=30)
        finally:
            srv.child.stop(timeout_s=3.0)
    asyncio.run(_clear(world.fake))
    refused = [j for j, a in answers.items() if a == 503]

    async def after(api: Api, session: aiohttp.ClientSession) -> tuple[Any, Any]:
        gone = {j: (await api.call("GET", f"/api/generations/{j}"))[0] for j in refused}
        return await api.wait_all(acked, JOB_TIMEOUT_S), gone

    with ext4_mount(image, data, fresh=False), world.server("faults-ro-2", data_dir=data) as again:
        jobs, gone = run(again, after)
    return ReadOnlyRun(acked, answers, health[0], jobs, gone)


def test_a_data_directory_turned_read_only_loses_no_acknowledged_job(
    read_only_run: ReadOnlyRun,
) -> None:
    ro = read_only_run
    assert len(ro.acked) >= 4
    counts = collections.Counter(j["status"] for j in ro.after.values())
    assert counts == {"completed": len(ro.acked)}, ro.after
    assert set(ro.refused_after.values()) <= {404}, ro.refused_after  # nothing of them kept


def test_a_data_directory_turned_read_only_refuses_new_jobs_with_503(
    read_only_run: ReadOnlyRun,
) -> None:
    ro = read_only_run
    answers = list(ro.answers.values())
    assert all(a in (202, 503) for a in answers), ro.answers  # an answer, promptly
    assert answers.count(503) == 3, ro.answers
    first = answers.index(503)
    assert set(answers[first:]) == {503}, ro.answers  # once refused, always refused
    assert ro.healthz == 503, ro.healthz
