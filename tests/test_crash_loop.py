"""The crash loop: 300 jobs over HTTP while the server is SIGKILLed 10 times at random moments.

Every part is its own process on loopback: `main.py serve` (restarted on the same data
directory after each kill), the fake Veo (`main.py fake-veo`, which outlives the server's
restarts as Google's would, and shows what it was asked at `GET /_fake/stats`), and a
webhook receiver (tests/crash_loop_receiver.py) that verifies each signature with
`standardwebhooks`.

Jobs carry client-chosen ids, so a submission whose answer was lost to a kill is sent again
until it is acknowledged (202, or 200 when the lost one had been stored). The kill moments
come from a seeded random; the checks are invariants, true whatever the timing:
- every acknowledged job ends `completed`, and submitting its id again returns it (200);
- a stored operation is resumed, never redone: each job has exactly one operation that was
  polled, and it is the job's last; every other start the fake Veo saw for the job is an
  orphan of a kill, never polled and started within moments of one (see below);
- every job has its `generation.completed` webhook, verified; redeliveries keep their
  `webhook-id` and bytes; no job has two different terminal events.

Orphan starts are the one gap left: Veo's `predictLongRunning` takes no idempotency key,
so a kill after the paid start was sent but before its operation name is durably stored
(the answer's round trip plus one commit) leaves the restarted server no way to know the
operation exists, and it starts another. `test_a_kill_while_the_start_answer_is_in_flight`
reproduces it deterministically, holding the answer in a proxy.

Every wait has a deadline and says what it was waiting for.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import random
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from helpers_procs import MAIN, Child, child_env, free_port

from genqueue import TERMINAL

RECEIVER = str(Path(__file__).resolve().parent / "crash_loop_receiver.py")

SEED = 20250107
JOBS = 300
KILLS = 10
UPTIME_S = (0.3, 1.6)  # each server lives a random time in this range before its SIGKILL
TAIL_S = 1.0  # submissions go on this long (in server uptime) after the last kill
FAKE_LATENCY_S = 0.3
API_KEY = "crash-key"
USER = "crash-user"
SECRET = "whsec_" + base64.b64encode(b"crash-loop-webhook-secret-32byte").decode()
# An orphan start reached the fake Veo at most this long before the kill that orphaned it
# (its answer's round trip plus the checkpoint's commit), or this long after (the request
# was in the socket when the server died).
ORPHAN_BEFORE_S, ORPHAN_AFTER_S = 0.5, 0.25

START_TIMEOUT_S = 20.0  # a process answering after its start
SUBMIT_TIMEOUT_S = 60.0  # every job acknowledged, all kills done
DRAIN_TIMEOUT_S = 40.0  # every job terminal after that
WEBHOOK_TIMEOUT_S = 20.0  # every completion webhook received after that


def server_env(veo_url: str, **extra: str) -> dict[str, str]:
    return child_env(
        GENQUEUE_API_KEYS=f"{API_KEY}={USER}",
        VEO3_API_KEY="dummy-veo-key",
        VEO3_BASE_URL=veo_url,
        GENQUEUE_POLL_INTERVAL_S="0.05",
        GENQUEUE_MAX_CONCURRENCY="32",
        **extra,
    )


def fake_veo(logs: Path) -> tuple[Child, str]:
    port = free_port()
    args = [MAIN, "fake-veo", "--port", str(port), "--latency-s", str(FAKE_LATENCY_S)]
    return Child(args, logs, "fake-veo", child_env()), f"http://127.0.0.1:{port}"


def serve(logs: Path, data_dir: Path, port: int, n: int, env: dict[str, str]) -> Child:
    args = [MAIN, "serve", "--port", str(port), "--data-dir", str(data_dir)]
    return Child(args, logs, f"serve-{n:02d}", env).start()


async def wait_ready(session: aiohttp.ClientSession, url: str, child: Child) -> float:
    """Poll `url` until it answers 200; seconds it took. Fails if the child dies or stalls."""
    t0 = time.monotonic()
    while True:
        assert child.proc is not None
        if child.proc.poll() is not None:
            raise AssertionError(
                f"{child.name} exited {child.proc.returncode} before {url} answered" + child.tail()
            )
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                if resp.status == 200:
                    return time.monotonic() - t0
        if time.monotonic() - t0 > START_TIMEOUT_S:
            raise AssertionError(f"{child.name}: {url} not ready in {START_TIMEOUT_S} s")
        await asyncio.sleep(0.05)


async def get_json(session: aiohttp.ClientSession, url: str, **kw: Any) -> Any:
    kw.setdefault("timeout", aiohttp.ClientTimeout(total=10))
    async with session.get(url, **kw) as resp:
        assert resp.status == 200, (url, resp.status, await resp.text())
        return await resp.json()


async def wait_job(
    session: aiohttp.ClientSession, url: str, job_id: str, timeout_s: float
) -> dict[str, Any]:
    """The job once terminal; fails with its last state after `timeout_s`."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    deadline = time.monotonic() + timeout_s
    while True:
        job = await get_json(session, f"{url}/api/generations/{job_id}", headers=auth)
        if job["status"] in TERMINAL:
            return dict(job)
        assert time.monotonic() < deadline, f"{job_id} not terminal in {timeout_s} s: {job}"
        await asyncio.sleep(0.1)


class CrashLoop:
    """The processes and what the run saw; `run()` drives it all."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.data_dir = tmp / "data"
        rng = random.Random(SEED)
        self.uptimes = [rng.uniform(*UPTIME_S) for _ in range(KILLS)]
        # Submissions are paced in server uptime, so that jobs arrive (and run) throughout
        # the kills, however long the restarts take.
        self.submit_rate = JOBS / (sum(self.uptimes) + TAIL_S)
        self.fake, self.fake_url = fake_veo(tmp)
        self.hook_port, self.port = free_port(), free_port()
        self.hook_url = f"http://127.0.0.1:{self.hook_port}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth = {"Authorization": f"Bearer {API_KEY}"}
        self.receiver = Child([RECEIVER, str(self.hook_port), SECRET], tmp, "receiver", child_env())
        self.servers: list[Child] = []
        self.up = asyncio.Event()
        self.acked: dict[str, int] = {}  # job id -> 202 | 200 (its first acknowledgement)
        self.lost: set[str] = set()  # ids whose submission lost its answer at least once
        self.kill_times: list[float] = []  # time.time() of each SIGKILL
        self.kill_notes: list[str] = []
        self.restart_s: list[float] = []

    def server(self) -> Child:
        return self.servers[-1]

    async def start_server(self, session: aiohttp.ClientSession) -> None:
        env = server_env(
            self.fake_url,
            WEBHOOK_URL=f"{self.hook_url}/hook",
            WEBHOOK_SECRET=SECRET,
            GENQUEUE_WEBHOOK_RETRY_S="0,0.1,0.3,1,2,4,8",
        )
        child = serve(self.tmp, self.data_dir, self.port, len(self.servers), env)
        self.servers.append(child)
        self.restart_s.append(await wait_ready(session, f"{self.url}/healthz", child))
        self.up.set()

    def close(self) -> None:
        for child in [*self.servers, self.fake, self.receiver]:
            if child.proc is not None:
                child.stop()

    # -- the phases -----------------------------------------------------------------------

    async def submit(self, session: aiohttp.ClientSession, n: int) -> None:
        """POST job `n` until it is acknowledged; a lost answer is sent again, same id."""
        job_id = f"crash-{n:03d}"
        body = {"id": job_id, "prompt": f"crash loop {job_id}", "parameters": {"duration": 4}}
        url = f"{self.url}/api/generations"
        while True:
            await self.up.wait()
            try:
                timeout = aiohttp.ClientTimeout(total=5)
                async with session.post(url, json=body, headers=self.auth, timeout=timeout) as r:
                    status, text = r.status, await r.text()
            except (aiohttp.ClientError, TimeoutError):
                self.lost.add(job_id)  # killed mid-request: stored or not, we cannot tell
                await asyncio.sleep(0.05)
                continue
            if status in (200, 202):
                assert json.loads(text)["id"] == job_id, text
                self.acked[job_id] = status
                return
            # Only a server going down may refuse (503); anything else is a bug.
            assert status == 503, f"submitting {job_id}: {status} {text}"
            await asyncio.sleep(0.05)

    async def submit_all(self, session: aiohttp.ClientSession) -> None:
        tasks = []
        for n in range(JOBS):
            await self.up.wait()
            tasks.append(asyncio.create_task(self.submit(session, n)))
            await asyncio.sleep(1 / self.submit_rate)
        await asyncio.gather(*tasks)

    async def kill_loop(self, session: aiohttp.ClientSession) -> None:
        for k, uptime in enumerate(self.uptimes):
            await asyncio.sleep(uptime)
            status: dict[str, Any] = {}
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, AssertionError):
                timeout = aiohttp.ClientTimeout(total=0.5)
                status = await get_json(
                    session, f"{self.url}/api/queue/status", headers=self.auth, timeout=timeout
                )
            self.up.clear()
            self.kill_times.append(time.time())
            self.server().sigkill()
            self.kill_notes.append(
                f"kill {k + 1} after {uptime:.2f} s up: {len(self.acked)} acknowledged, "
                f"{status.get('inFlight', '?')} in flight, {status.get('queued', '?')} queued"
            )
            await self.start_server(session)

    async def wait_terminal(self, session: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
        """Every acknowledged job's record, once all are terminal (or a clear failure)."""
        jobs: dict[str, dict[str, Any]] = {}
        pending = set(self.acked)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        sem = asyncio.Semaphore(16)

        async def fetch(job_id: str) -> None:
            async with sem:
                url = f"{self.url}/api/generations/{job_id}"
                jobs[job_id] = job = await get_json(session, url, headers=self.auth)
            if job["status"] in TERMINAL:
                pending.discard(job_id)

        while pending:
            await asyncio.gather(*(fetch(j) for j in sorted(pending)))
            if not pending:
                break
            if time.monotonic() > deadline:
                states = collections.Counter(jobs[j]["status"] for j in pending)
                raise AssertionError(
                    f"{len(pending)} jobs not terminal {DRAIN_TIMEOUT_S} s after the last "
                    f"restart: {dict(states)}, e.g. {jobs[min(pending)]}" + self.server().tail()
                )
            await asyncio.sleep(0.5)
        return jobs

    async def wait_webhooks(self, session: aiohttp.ClientSession) -> None:
        """Until every job has its completion webhook (or a clear failure)."""
        deadline = time.monotonic() + WEBHOOK_TIMEOUT_S
        while True:
            got = await get_json(session, f"{self.hook_url}/received")
            done = {d["jobId"] for d in got["deliveries"] if d["event"] == "generation.completed"}
            missing = set(self.acked) - done
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(missing)} jobs without a completion webhook after "
                    f"{WEBHOOK_TIMEOUT_S} s, e.g. {sorted(missing)[:5]}" + self.server().tail()
                )
            await asyncio.sleep(0.2)

    async def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            self.fake.start()
            self.receiver.start()
            await wait_ready(session, f"{self.fake_url}/_fake/stats", self.fake)
            await wait_ready(session, f"{self.hook_url}/received", self.receiver)
            await self.start_server(session)

            both = asyncio.gather(self.submit_all(session), self.kill_loop(session))
            try:
                await asyncio.wait_for(both, SUBMIT_TIMEOUT_S)
            except TimeoutError:
                raise AssertionError(
                    f"not done in {SUBMIT_TIMEOUT_S} s: {len(self.acked)}/{JOBS} acknowledged, "
                    f"{len(self.kill_times)}/{KILLS} kills" + self.server().tail()
                ) from None
            t_loop = time.monotonic() - t0

            jobs = await self.wait_terminal(session)
            t_drain = time.monotonic() - t0
            await self.wait_webhooks(session)
            await asyncio.sleep(0.5)  # let late redeliveries arrive before the final count
            hooks = await get_json(session, f"{self.hook_url}/received")
            veo = await get_json(session, f"{self.fake_url}/_fake/stats")

            again = collections.Counter[int]()
            for job_id in sorted(self.acked):  # the same id again: the same job, never another
                body = {"id": job_id, "prompt": f"crash loop {job_id}"}
                url = f"{self.url}/api/generations"
                async with session.post(url, json=body, headers=self.auth) as resp:
                    again[resp.status] += 1
            code = self.server().stop()
        return {
            "jobs": jobs,
            "hooks": hooks,
            "veo": veo,
            "again": again,
            "final_exit": code,
            "times": (t_loop, t_drain, time.monotonic() - t0),
        }


def restart_counts(servers: list[Child]) -> tuple[int, int]:
    """From the servers' JSON logs: generations resumed after a restart that polled their
    stored operation, and those that had none stored yet (so started one)."""
    polled = started = 0
    for child in servers[1:]:
        resuming: set[str] = set()
        for line in child.err_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if str(rec.get("event", "")).startswith("resuming job"):
                    resuming.add(rec.get("job_id"))
                elif rec.get("event") == "generation started" and rec.get("job_id") in resuming:
                    if rec.get("resumed"):
                        polled += 1
                    else:
                        started += 1
    return polled, started


def check_paid_starts(
    veo: dict[str, Any], prompts: set[str], kill_times: list[float]
) -> tuple[list[str], list[str]]:
    """(orphan starts, problems): per job, exactly one operation was polled and it is the
    job's last; every other one was never polled and started within the window of a kill."""
    by_prompt: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for op in veo["operations"]:
        by_prompt[op["prompt"]].append(op)
    orphans: list[str] = []
    problems: list[str] = []
    if set(by_prompt) != prompts:
        problems.append(f"started / submitted prompts differ: {set(by_prompt) ^ prompts}")

    def near_kill(op: dict[str, Any]) -> str:
        n, kill = min(enumerate(kill_times, 1), key=lambda k: abs(k[1] - op["startedAt"]))
        ms = 1000 * (op["startedAt"] - kill)
        return f"op …{op['name'][-6:]} polled {op['polls']}x, started {ms:+.0f} ms from kill {n}"

    for prompt, ops in sorted(by_prompt.items()):
        ops.sort(key=lambda op: op["startedAt"])
        polled = [op for op in ops if op["polls"] > 0]
        if len(polled) != 1 or polled[0] is not ops[-1]:
            problems.append(f"{prompt}: " + "; ".join(near_kill(op) for op in ops))
            continue
        for op in ops[:-1]:
            orphan = any(
                -ORPHAN_BEFORE_S <= op["startedAt"] - k <= ORPHAN_AFTER_S for k in kill_times
            )
            (orphans if orphan else problems).append(f"{prompt}: {near_kill(op)}")
    return orphans, problems


@pytest.mark.timeout(170)
def test_crash_loop_300_jobs_10_sigkills(tmp_path: Path) -> None:
    crash = CrashLoop(tmp_path)
    try:
        seen = asyncio.run(crash.run())
    finally:
        crash.close()
    jobs, hooks, veo = seen["jobs"], seen["hooks"], seen["veo"]
    t_loop, t_drain, t_all = seen["times"]
    resumed, restarted = restart_counts(crash.servers)
    orphans, problems = check_paid_starts(
        veo, {f"crash loop {j}" for j in crash.acked}, crash.kill_times
    )
    print(
        f"\ncrash loop: {len(crash.acked)} acknowledged "
        f"({sum(1 for s in crash.acked.values() if s == 200)} as 200 after a lost answer; "
        f"{len(crash.lost)} lost an answer), {len(crash.kill_times)} kills, restarts "
        f"{min(crash.restart_s):.2f}-{max(crash.restart_s):.2f} s; submit+kills {t_loop:.1f} s, "
        f"drained {t_drain:.1f} s, all {t_all:.1f} s; Veo starts {veo['starts']}, "
        f"polls {veo['polls']}, downloads {veo['downloads']}; webhooks "
        f"{len(hooks['deliveries'])} deliveries; after restarts {resumed} generations "
        f"polled their stored operation, {restarted} had none stored; "
        f"{len(orphans)} orphan starts\n  " + "\n  ".join(crash.kill_notes + orphans)
    )

    # Every job was acknowledged, every kill happened and was followed by a clean start.
    assert len(crash.acked) == JOBS and len(crash.kill_times) == KILLS
    assert len(crash.servers) == KILLS + 1
    assert seen["final_exit"] == 0, crash.server().tail()
    # The kills interrupted generations (else this test would prove nothing about resuming).
    assert resumed >= KILLS, f"only {resumed} generations were resumed after a kill"

    # Every acknowledged job is completed, with its video; its id again gives the same job.
    not_done = {j: (v["status"], v["error"]) for j, v in jobs.items() if v["status"] != "completed"}
    assert not not_done, f"{len(not_done)} jobs not completed: {list(not_done.items())[:5]}"
    for job_id, job in jobs.items():
        url = urllib.parse.urlsplit(job["result"]["videoUrl"])
        assert job["userId"] == USER and url.path.startswith(f"/videos/{USER}/"), url
        assert "signature=" in url.query and job_id not in url.path  # signed, unguessable
    assert seen["again"] == {200: JOBS}, seen["again"]

    # A stored operation is resumed, never redone; any other start is a kill's orphan.
    assert veo["starts"] == len(veo["operations"]) == JOBS + len(orphans)
    assert not problems, f"{len(problems)} jobs started Veo more than once:\n" + "\n".join(problems)
    assert veo["downloads"] >= JOBS

    # Every job has its completion webhook, verified; duplicates are redeliveries (same
    # webhook-id, same bytes); no job has two different terminal events.
    assert hooks["rejected"] == 0
    terminal = {"generation.completed", "generation.failed", "generation.cancelled"}
    by_job: dict[str, set[tuple[str, str, str]]] = collections.defaultdict(set)
    for d in hooks["deliveries"]:
        if d["event"] in terminal:
            by_job[d["jobId"]].add((d["event"], d["id"], d["sha256"]))
    assert set(by_job) == set(crash.acked)
    twice = {j: sorted(s) for j, s in by_job.items() if len(s) != 1}
    assert not twice, f"jobs with more than one distinct terminal webhook: {twice}"
    assert all(next(iter(s))[0] == "generation.completed" for s in by_job.values())


# -- the gap, reproduced -------------------------------------------------------------------------


class HoldingProxy:
    """Forwards every request to the fake Veo; while `holding`, keeps the answer to a start
    (which the fake has already counted, so paid for) until `release` is set."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.holding = True
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        keep = ("content-type", "x-goog-api-key", "authorization")
        headers = {k: v for k, v in request.headers.items() if k.lower() in keep}
        body = await request.read()
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, self.upstream + request.path_qs, data=body or None, headers=headers
            ) as resp,
        ):
            data, status = await resp.read(), resp.status
            ctype = resp.headers.get("Content-Type", "application/octet-stream")
        if self.holding and request.method == "POST" and "predictLongRunning" in request.path:
            self.held.set()
            await self.release.wait()
        return web.Response(body=data, status=status, headers={"Content-Type": ctype})

    async def __aenter__(self) -> HoldingProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.mark.timeout(60)
def test_a_kill_while_the_start_answer_is_in_flight_starts_a_second_operation(
    tmp_path: Path,
) -> None:
    """Documents the limit of "one paid start per job": Veo has no idempotency key, so when
    the server dies after the fake Veo accepted a start but before the answer (the operation
    name) was stored, the restarted server cannot know of that operation and starts another.
    The orphan is never polled. Once the name is stored, a kill resumes it (the crash loop)."""
    fake, fake_url = fake_veo(tmp_path)
    children = [fake.start()]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {API_KEY}"}

    async def scenario() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session, HoldingProxy(fake_url) as proxy:
            await wait_ready(session, f"{fake_url}/_fake/stats", fake)
            env = server_env(proxy.url)
            children.append(first := serve(tmp_path, tmp_path / "data", port, 0, env))
            await wait_ready(session, f"{url}/healthz", first)
            body = {"id": "held-1", "prompt": "crash loop held-1"}
            async with session.post(f"{url}/api/generations", json=body, headers=auth) as r:
                assert r.status == 202, await r.text()
            await asyncio.wait_for(proxy.held.wait(), 10)  # the fake has started (paid)
            first.sigkill()  # before the server has the operation's name
            proxy.holding = False
            proxy.release.set()
            children.append(second := serve(tmp_path, tmp_path / "data", port, 1, env))
            await wait_ready(session, f"{url}/healthz", second)
            job = await wait_job(session, url, "held-1", 20)
            assert job["status"] == "completed", job
            stats = await get_json(session, f"{fake_url}/_fake/stats")
            assert second.stop() == 0
            return list(stats["operations"])

    try:
        ops = asyncio.run(scenario())
    finally:
        for child in children:
            child.stop()
    assert [op["prompt"] for op in ops] == ["crash loop held-1"] * 2, ops
    orphan, resumed = sorted(ops, key=lambda op: op["startedAt"])
    assert orphan["polls"] == orphan["downloads"] == 0  # paid for, never used
    assert resumed["polls"] >= 1 and resumed["downloads"] == 1
