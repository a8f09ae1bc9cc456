"""The plan's Phase 1 and Phase 2 tests (issue 7, "Fault suite"), against real processes.

`main.py serve` runs with the fake Veo (`main.py fake-veo`), moto's S3 server and a webhook
receiver that verifies signatures with `standardwebhooks`, each its own process on loopback
(tests/helpers_procs.py). Phase 1: one generation end to end, three at once, an invalid
request, a failing generation. Phase 2: FIFO with concurrency 1, a rate limit the provider
sees kept, a Veo failure retried and then reported by the failure webhook.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers_procs import (
    ADMIN_KEY,
    USER,
    Api,
    FakeVeoProc,
    Receiver,
    Server,
    assert_whole_video,
    eventually,
    make_bucket,
    run,
    s3_env,
    s3_objects,
    video_key,
)

from genqueue import TERMINAL

FAKE_LATENCY_S = 0.3
JOB_TIMEOUT_S = 20.0  # a job's end, from its submission, in these tests
HOOK_TIMEOUT_S = 10.0  # its webhook, after its end

pytestmark = pytest.mark.timeout(60)


@dataclass
class Stack:
    logs: Path
    fake: FakeVeoProc
    receiver: Receiver
    s3: str
    bucket: str

    def server(self, name: str, **kw: Any) -> Server:
        env = s3_env(self.s3, self.bucket) | kw.pop("env", {})
        return Server(self.logs, name, fake=self.fake, receiver=self.receiver, env=env, **kw)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("phases")
    make_bucket(moto_endpoint, "phases")
    fake = FakeVeoProc(logs, latency_s=FAKE_LATENCY_S)
    receiver = Receiver(logs)
    try:
        yield Stack(logs, fake.start(), receiver.start(), moto_endpoint, "phases")
    finally:
        fake.stop()
        receiver.stop()


@pytest.fixture(scope="module")
def server(stack: Stack) -> Iterator[Server]:
    """Concurrency 4; a failed job gets one more attempt, a failed Veo call one more try."""
    with stack.server(
        "phases-serve",
        env={"GENQUEUE_MAX_ATTEMPTS": "2"},
        config={"max_retries": 1, "retry_backoff_s": 0.2},
    ) as srv:
        yield srv


async def statuses_streamed(api: Api, job_id: str, timeout_s: float) -> list[str]:
    """The statuses the job's Server-Sent Events stream shows, until the terminal one."""
    seen: list[str] = []
    url = f"{api.url}/api/generations/{job_id}/events"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with api.session.get(url, headers=api.headers, timeout=timeout) as resp:
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                status = json.loads(line[5:])["status"]
                if not seen or seen[-1] != status:
                    seen.append(status)
                if status in TERMINAL:
                    break
    return seen


def terminal(deliveries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ends = ("generation.completed", "generation.failed", "generation.cancelled")
    return [d for d in deliveries if d["event"] in ends]


def assert_completed_hook(delivery: dict[str, Any], job: dict[str, Any]) -> None:
    payload = delivery["payload"]
    assert payload["event"] == "generation.completed", payload
    assert (payload["jobId"], payload["userId"], payload["status"]) == (
        job["id"],
        USER,
        "completed",
    )
    assert payload["result"]["videoUrl"] == job["result"]["videoUrl"], payload
    assert payload["result"]["duration"] == job["result"]["duration"]


# -- Phase 1 ------------------------------------------------------------------------------------


def test_one_generation_end_to_end(stack: Stack, server: Server) -> None:
    async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
        prompt = "phase 1: a red fox running through snow"
        queued = await api.submit({"id": "p1-one", "prompt": prompt})
        assert (queued["status"], queued["userId"], queued["prompt"]) == ("queued", USER, prompt)
        seen = await statuses_streamed(api, "p1-one", JOB_TIMEOUT_S)
        assert seen[-1] == "completed" and "processing" in seen, seen
        job = await api.job("p1-one")
        assert (job["status"], job["progress"], job["attempts"], job["error"]) == (
            "completed",
            100,
            1,
            None,
        )
        key = video_key(job)
        assert key.startswith(f"videos/{USER}/") and "p1-one" not in key, key  # unguessable
        assert job["result"]["duration"] == 8 and job["result"]["processingTime"] > 0

        stored = await s3_objects(stack.s3, stack.bucket)
        assert_whole_video(stored.get(key), stack.fake.video_size, "p1-one")

        hooks = await stack.receiver.events_for(
            session, {"p1-one"}, {"generation.completed"}, HOOK_TIMEOUT_S
        )
        ends = terminal(hooks["p1-one"])
        assert len({d["id"] for d in ends}) == 1, ends  # one event (redeliveries share the id)
        assert_completed_hook(ends[0], job)

        ops = await stack.fake.ops(session, prompt)
        assert [(op["polls"] > 0, op["downloads"]) for op in ops] == [(True, 1)], ops

    run(server, scenario)


def test_three_generations_at_once(stack: Stack, server: Server) -> None:
    async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
        ids = [f"p1-three-{i}" for i in range(3)]
        await asyncio.gather(*(api.submit({"id": j, "prompt": f"phase 1: {j}"}) for j in ids))
        jobs = await api.wait_all(ids, JOB_TIMEOUT_S)
        assert {j: v["status"] for j, v in jobs.items()} == dict.fromkeys(ids, "completed")

        stored = await s3_objects(stack.s3, stack.bucket)
        for j in ids:
            assert_whole_video(stored.get(video_key(jobs[j])), stack.fake.video_size, j)
        hooks = await stack.receiver.events_for(
            session, set(ids), {"generation.completed"}, HOOK_TIMEOUT_S
        )
        for j in ids:
            assert_completed_hook(terminal(hooks[j])[0], jobs[j])
        # One paid start each, and they ran together (concurrency 4), not one after another.
        starts = []
        for j in ids:
            ops = await stack.fake.ops(session, f"phase 1: {j}")
            assert len(ops) == 1, ops
            starts.append(ops[0]["startedAt"])
        assert max(starts) - min(starts) < FAKE_LATENCY_S, starts

    run(server, scenario)


INVALID: list[tuple[Any, str, str | None]] = [  # body, error code, field named
    ({"id": "inv-blank", "prompt": "   "}, "invalid_request", "prompt"),
    ({"id": "inv-long", "prompt": "x" * 4001}, "invalid_request", "prompt"),
    ({"id": "inv-type", "prompt": 42}, "invalid_request", "prompt"),
    ({"id": "inv-dur", "prompt": "a cat", "parameters": {"duration": 5}}, None, "duration"),
    (
        {"id": "inv-res", "prompt": "a cat", "parameters": {"resolution": "4k", "duration": 4}},
        None,
        "resolution",
    ),
    (
        {"id": "inv-ar", "prompt": "a cat", "parameters": {"aspectRatio": "4:3"}},
        None,
        "aspectRatio",
    ),
    ({"id": "inv-prio", "prompt": "a cat", "priority": 11}, None, "priority"),
    ({"id": "inv-extra", "prompt": "a cat", "colour": "red"}, None, "colour"),
    ({"id": "bad id!", "prompt": "a cat"}, None, "id"),
    ("{not json", "invalid_json", None),
]


def test_invalid_requests_get_a_clear_4xx_and_store_nothing(stack: Stack, server: Server) -> None:
    async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
        admin = server.api(session, ADMIN_KEY)
        before = (await admin.queue_status())["submitted"]
        starts = (await stack.fake.stats(session))["starts"]
        for body, code, field in INVALID:
            if isinstance(body, str):
                raw = aiohttp.payload.StringPayload(body, content_type="application/json")
                status, reply = await api.call("POST", "/api/generations", data=raw)
            else:
                status, reply = await api.call("POST", "/api/generations", json=body)
            assert 400 <= status < 500 and isinstance(reply, dict), (body, status, reply)
            error = reply["error"]
            assert error["message"], (body, error)
            if code is not None:
                assert error["code"] == code, (body, error)
            if field is not None:  # the field is named, in `field` or at least the message
                named = f"{error.get('field')} {error['message']}"
                assert field in named, (body, error)
            if isinstance(body, dict) and isinstance(body["id"], str) and " " not in body["id"]:
                status, reply = await api.call("GET", f"/api/generations/{body['id']}")
                assert status == 404, (body, status, reply)  # nothing half-stored
        assert (await admin.queue_status())["submitted"] == before
        assert (await stack.fake.stats(session))["starts"] == starts
        status, _ = await server.api(session, "not-a-key").call(
            "POST", "/api/generations", json={"prompt": "a cat"}
        )
        assert status == 401

    run(server, scenario)


def test_a_failing_generation_sends_the_failure_webhook(stack: Stack, server: Server) -> None:
    async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
        cases = {  # job id -> (prompt, words the error must say)
            "p1-unsafe": ("[unsafe] phase 1 a failing generation", "safety"),
            "p1-refused": ("[bad-request] phase 1 a refused generation", "invalid argument"),
        }
        before = set(await s3_objects(stack.s3, stack.bucket))
        for job_id, (prompt, _) in cases.items():
            await api.submit({"id": job_id, "prompt": prompt})
        jobs = await api.wait_all(list(cases), JOB_TIMEOUT_S)
        hooks = await stack.receiver.events_for(
            session, set(cases), {"generation.failed"}, HOOK_TIMEOUT_S
        )
        stored = await s3_objects(stack.s3, stack.bucket)
        for job_id, (_, words) in cases.items():
            job = jobs[job_id]
            assert job["status"] == "failed" and job["result"] is None, job
            assert words in job["error"].lower(), job["error"]
            assert job["attempts"] == 1, job  # permanent: never retried
            (end,) = terminal(hooks[job_id])
            payload = end["payload"]
            assert (payload["event"], payload["status"], payload["error"]) == (
                "generation.failed",
                "failed",
                job["error"],
            )
            assert "result" not in payload or payload["result"] is None, payload
        assert set(stored) == before  # no video for a failed job
        assert len(await stack.fake.ops(session, cases["p1-unsafe"][0])) == 1
        assert await stack.fake.ops(session, cases["p1-refused"][0]) == []  # 400: not started

    run(server, scenario)


# -- Phase 2 ------------------------------------------------------------------------------------


def test_five_jobs_run_in_fifo_order_with_concurrency_1(stack: Stack) -> None:
    with stack.server("phases-fifo", env={"GENQUEUE_MAX_CONCURRENCY": "1"}) as srv:

        async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
            ids = [f"fifo-{i}" for i in range(5)]
            for j in ids:  # each acknowledged before the next is sent
                await api.submit({"id": j, "prompt": f"phase 2 fifo {j}"})
            jobs = await api.wait_all(ids, JOB_TIMEOUT_S)
            assert [jobs[j]["status"] for j in ids] == ["completed"] * 5
            ops = [await stack.fake.ops(session, f"phase 2 fifo {j}") for j in ids]
            assert [len(o) for o in ops] == [1] * 5, ops
            started = [o[0]["startedAt"] for o in ops]
            assert started == sorted(started), f"started out of order: {started}"
            ended = [datetime.fromisoformat(jobs[j]["updatedAt"]).timestamp() for j in ids]
            for i in range(4):  # one at a time: the next started after this one ended
                assert started[i + 1] >= ended[i] - 0.01, (i, started, ended)

        run(srv, scenario)


def test_ten_requests_never_exceed_the_rate_limit_at_the_provider(stack: Stack) -> None:
    limit = 4
    env = {"GENQUEUE_RATE_LIMIT_PER_MINUTE": str(limit), "GENQUEUE_MAX_CONCURRENCY": "10"}
    with stack.server("phases-rate", env=env) as srv:

        async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
            ids = [f"rate-{i}" for i in range(10)]
            prompts = {f"phase 2 rate {j}": j for j in ids}
            for j in ids:
                await api.submit({"id": j, "prompt": f"phase 2 rate {j}"})

            async def started() -> list[tuple[float, str]]:
                ops = (await stack.fake.stats(session))["operations"]
                return sorted(
                    (op["startedAt"], prompts[op["prompt"]])
                    for op in ops
                    if op["prompt"] in prompts
                )

            async def four_done() -> tuple[bool, Any]:
                st = await api.queue_status()
                return st["completed"] >= limit, st

            await eventually(four_done, f"{limit} jobs completed", JOB_TIMEOUT_S)
            # Watch the provider for a while: the other six stay queued, nothing more starts.
            watch_until = time.monotonic() + 1.5
            while time.monotonic() < watch_until:
                assert len(await started()) == limit, await started()
                await asyncio.sleep(0.1)
            starts = await started()
            per_minute = max(sum(1 for t, _ in starts if s <= t < s + 60) for s, _ in starts)
            assert per_minute == limit, starts
            assert [j for _, j in starts] == ids[:limit]  # the first four, FIFO
            st = await api.queue_status()
            assert (st["queued"], st["inFlight"], st["completed"]) == (6, 0, limit), st
            waiting = collections.Counter([(await api.job(j))["status"] for j in ids[limit:]])
            assert waiting == {"queued": 6}, waiting

        run(srv, scenario)


def test_a_veo_failure_is_retried_then_reported_by_the_failure_webhook(
    stack: Stack, server: Server
) -> None:
    async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
        # An operation that fails with a retryable gRPC code (13, INTERNAL) every time: the
        # generation starts a new one once (max_retries 1), then the job fails for good.
        op_prompt = "[op-error:13] phase 2 the operation always fails"
        await api.submit({"id": "p2-op-error", "prompt": op_prompt})
        jobs = await api.wait_all(["p2-op-error"], JOB_TIMEOUT_S)
        # Then (the fake's failures go to whichever call comes next) Veo answering 503 to
        # every start: each attempt tries twice (max_retries 1), and the job gets a second
        # attempt (GENQUEUE_MAX_ATTEMPTS 2): four calls, then failed.
        await stack.fake.faults(session, fail_starts={"status": 503, "count": 4})
        await api.submit({"id": "p2-503", "prompt": "phase 2 Veo answers 503"})
        jobs |= await api.wait_all(["p2-503"], JOB_TIMEOUT_S)
        hooks = await stack.receiver.events_for(
            session, set(jobs), {"generation.failed"}, HOOK_TIMEOUT_S
        )

        op_job = jobs["p2-op-error"]
        assert op_job["status"] == "failed" and "after 2 operations" in op_job["error"], op_job
        ops = await stack.fake.ops(session, op_prompt)
        assert len(ops) == 2 and all(op["polls"] >= 1 for op in ops), ops

        busy = jobs["p2-503"]
        assert busy["status"] == "failed" and busy["attempts"] == 2, busy
        assert "503" in busy["error"], busy["error"]
        assert (await stack.fake.stats(session))["faults"]["fail_starts"] == 0  # all 4 used
        assert await stack.fake.ops(session, "phase 2 Veo answers 503") == []

        for job_id, job in jobs.items():
            (end,) = terminal(hooks[job_id])
            assert end["payload"]["event"] == "generation.failed"
            assert end["payload"]["error"] == job["error"]
        st = await api.queue_status()
        assert st["retried"] >= 1, st

    run(server, scenario)
