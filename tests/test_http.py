"""The HTTP API through a real aiohttp server on loopback, with test processors."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from conftest import aeventually, run
from multidict import CIMultiDictProxy

from genqueue import TERMINAL
from genqueue.clock import ManualClock
from genqueue.config import Config
from genqueue.errors import ConfigError, StorageError
from genqueue.http import EVENTS, MAX_BODY_BYTES, QUEUE, JsonErrorRunner, create_app
from genqueue.http.app import STREAMS
from genqueue.http.auth import Caller
from genqueue.models import Job, JobResult

T = TypeVar("T")
KEYS = "k-alice-7f1e=alice,k-bob-33a0=bob,k-root-c9d2=root:admin"
TOKENS = {"alice": "k-alice-7f1e", "bob": "k-bob-33a0", "root": "k-root-c9d2"}
JOB_FIELDS = {
    "id", "userId", "status", "progress", "attempts", "prompt", "parameters", "provider",
    "model", "priority", "queuePosition", "result", "error", "createdAt", "updatedAt",
}  # fmt: skip


# -- test processors ----------------------------------------------------------------------------


def _result(job: Job) -> JobResult:
    url = f"http://127.0.0.1/videos/{job.user_id}/{job.id}.mp4"
    return JobResult(video_url=url, duration=8.0, processing_time=0.01)


class Instant:
    """Reports 50 %, then finishes at once."""

    async def __call__(self, job: Job, report: Any) -> JobResult:
        await report(progress=50)
        return _result(job)


class Gate:
    """Runs until the test releases the job; reports 10 % on start, 90 % on release."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.running: set[str] = set()

    def gate(self, job_id: str) -> asyncio.Event:
        return self.gates.setdefault(job_id, asyncio.Event())

    async def __call__(self, job: Job, report: Any) -> JobResult:
        self.running.add(job.id)
        try:
            await report(progress=10)
            await self.gate(job.id).wait()
            await report(progress=90)
            return _result(job)
        finally:
            self.running.discard(job.id)

    def release(self, job_id: str) -> None:
        self.gate(job_id).set()


# -- a server and a client ------------------------------------------------------------------------


class Api:
    def __init__(self, runner: web.AppRunner, base_url: str, session: aiohttp.ClientSession):
        self.runner = runner
        self.base_url = base_url
        self.session = session
        self.app = runner.app

    async def call(
        self, method: str, path: str, user: str | None = "alice", **kw: Any
    ) -> tuple[int, Any, CIMultiDictProxy[str]]:
        headers = dict(kw.pop("headers", {}))
        if user is not None:
            headers["Authorization"] = f"Bearer {TOKENS.get(user, user)}"
        async with self.session.request(method, path, headers=headers, **kw) as resp:
            text = await resp.text()
            ctype = resp.headers.get("Content-Type", "")
            body = json.loads(text) if ctype.startswith("application/json") else text
            return resp.status, body, resp.headers

    async def submit(self, user: str = "alice", **body: Any) -> dict[str, Any]:
        body.setdefault("prompt", "a cat surfing a wave")
        status, job, _ = await self.call("POST", "/api/generations", user, json=body)
        assert status == 202, job
        return dict(job)

    async def events(self, job_id: str, user: str = "alice") -> AsyncIterator[tuple[str, dict]]:
        """The job's SSE events as (event, job) until the server ends the stream."""
        headers = {"Authorization": f"Bearer {TOKENS[user]}"}
        async with self.session.get(f"/api/generations/{job_id}/events", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            event, data = "", ""
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif not line and data:
                    yield event, json.loads(data)
                    event, data = "", ""

    async def wait_done(self, job_id: str, user: str = "alice") -> dict[str, Any]:
        last: dict[str, Any] = {}
        async for _, job in self.events(job_id, user):
            last = job
        assert last["status"] in TERMINAL, last
        return last


@contextlib.asynccontextmanager
async def serve(
    tmp: Path,
    processor: Any = None,
    *,
    video_root: Path | None = None,
    clock: ManualClock | None = None,
    **config: Any,
) -> AsyncIterator[Api]:
    """The app on a free loopback port, run as `main.py serve` runs it (an AppRunner)."""
    config.setdefault("api_keys", KEYS)
    cfg = Config(data_dir=str(tmp / "data"), synchronous="NORMAL", **config)
    app = create_app(cfg, processor=processor or Instant(), video_root=video_root, clock=clock)
    runner = JsonErrorRunner(app)  # as `main.py serve` runs it
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession(base_url) as session:
            yield Api(runner, base_url, session)
    finally:
        await runner.cleanup()


def assert_error(status: int, body: Any, expected: int, code: str | None = None) -> dict:
    assert status == expected, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert {"code", "message"} <= set(err) <= {"code", "message", "field"}, err
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return dict(err)


def schema_validator(doc: dict[str, Any], name: str) -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    schema = {**doc, "$ref": f"#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema)


# -- jobs ----------------------------------------------------------------------------------------


def test_submit_runs_to_completion_with_public_json(tmp_path: Path) -> None:
    async def body() -> None:
        async with serve(tmp_path) as api:
            status, job, headers = await api.call(
                "POST",
                "/api/generations",
                json={"prompt": "a red fox", "parameters": {"duration": 6}, "priority": 3},
            )
            assert status == 202
            assert headers["Location"] == f"/api/generations/{job['id']}"
            assert set(job) == JOB_FIELDS
            assert job["userId"] == "alice" and job["status"] == "queued"
            assert job["priority"] == 3 and job["provider"] == "veo3"
            assert job["parameters"] == {
                "duration": 6,
                "aspectRatio": "16:9",
                "resolution": "720p",
                "negativePrompt": None,
                "seed": None,
                "sampleCount": 1,
                "generateAudio": None,
                "personGeneration": None,
                "image": None,
                "lastFrame": None,
                "referenceImages": None,
            }
            assert job["createdAt"].endswith("Z") and "T" in job["createdAt"]
            events = [(e, j["status"]) async for e, j in api.events(job["id"])]
            assert events[-1] == ("status", "completed")
            status, done, _ = await api.call("GET", f"/api/generations/{job['id']}")
            assert status == 200 and set(done) == JOB_FIELDS
            assert done["status"] == "completed" and done["progress"] == 100
            result = dict(done["result"])
            url = urlsplit(result.pop("videoUrl"))
            videos = result.pop("videos")
            assert result == {"duration": 8.0, "processingTime": 0.01}
            assert url.path == f"/videos/alice/{job['id']}.mp4"  # a local video: signed
            assert set(parse_qs(url.query)) == {"expires", "signature"}
            assert videos == [{"videoUrl": url.geturl()}]  # every video; here the one
            assert done["attempts"] == 1 and done["queuePosition"] is None
            _, doc, _ = await api.call("GET", "/api/openapi.json", None)
            errors = list(schema_validator(doc, "Job").iter_errors(done))
            assert not errors, errors

    run(body())


def test_client_id_is_idempotent_under_20_concurrent_posts(tmp_path: Path) -> None:
    async def body() -> None:
        async with serve(tmp_path) as api:
            req = {"id": "client-42:take.1", "prompt": "one job only"}
            answers = await asyncio.gather(
                *[api.call("POST", "/api/generations", json=req) for _ in range(20)]
            )
            statuses = sorted(status for status, _, _ in answers)
            assert statuses == [200] * 19 + [202]
            assert {job["id"] for _, job, _ in answers} == {"client-42:take.1"}
            await api.wait_done("client-42:take.1")
            _, page, _ = await api.call("GET", "/api/generations")
            assert [j["id"] for j in page["items"]] == ["client-42:take.1"]
            _, st, _ = await api.call("GET", "/api/queue/status")
            assert st["submitted"] == 1
            # Another user cannot take the id, nor learn about the job through it.
            status, err, _ = await api.call("POST", "/api/generations", "bob", json=req)
            assert assert_error(status, err, 409, "id_conflict")["field"] == "id"

    run(body())


def test_users_see_only_their_jobs_and_admin_sees_all(tmp_path: Path) -> None:
    async def body() -> None:
        gate = Gate()
        async with serve(tmp_path, gate) as api:
            alice = await api.submit("alice")
            bob = await api.submit("bob")
            path = f"/api/generations/{alice['id']}"
            for method in ("GET", "DELETE"):
                status, err, _ = await api.call(method, path, "bob")
                assert_error(status, err, 404, "not_found")
            status, err, _ = await api.call("GET", path + "/events", "bob")
            assert_error(status, err, 404, "not_found")
            _, page, _ = await api.call("GET", "/api/generations", "bob")
            assert [j["id"] for j in page["items"]] == [bob["id"]]
            _, page, _ = await api.call("GET", "/api/generations", "root")
            assert [j["id"] for j in page["items"]] == [bob["id"], alice["id"]]
            status, seen, _ = await api.call("GET", path, "root")
            assert status == 200 and seen["userId"] == "alice"
            status, cancelled, _ = await api.call("DELETE", f"/api/generations/{bob['id']}", "root")
            assert status in (200, 202) and cancelled["userId"] == "bob"
            for job in (alice, bob):
                gate.release(job["id"])

    run(body())


def test_cancel_queued_running_and_finished_jobs(tmp_path: Path) -> None:
    async def body() -> None:
        gate = Gate()
        async with serve(tmp_path, gate, max_concurrency=1) as api:
            running = await api.submit(prompt="first")
            waiting = await api.submit(prompt="second")
            status, job, _ = await api.call("DELETE", f"/api/generations/{waiting['id']}")
            assert status == 200 and job["status"] == "cancelled"
            events = api.events(running["id"])
            while (await anext(events))[1]["status"] != "processing":
                pass
            status, job, _ = await api.call("DELETE", f"/api/generations/{running['id']}")
            assert status == 202 and job["status"] == "processing"
            last = [j async for _, j in events][-1]
            assert last["status"] == "cancelled" and last["error"]
            for job_id in (running["id"], waiting["id"]):
                status, err, _ = await api.call("DELETE", f"/api/generations/{job_id}")
                assert_error(status, err, 409, "job_finished")
            for missing in ("no-such-job", "bad%20id"):
                status, err, _ = await api.call("DELETE", f"/api/generations/{missing}")
                assert_error(status, err, 404, "not_found")
                status, err, _ = await api.call("GET", f"/api/generations/{missing}")
                assert_error(status, err, 404, "not_found")

    run(body())


def test_sse_reports_status_and_progress_then_ends(tmp_path: Path) -> None:
    async def body() -> None:
        gate = Gate()
        async with serve(tmp_path, gate) as api:
            job = await api.submit()
            seen: list[tuple[str, str, int]] = []
            async for event, j in api.events(job["id"]):
                seen.append((event, j["status"], j["progress"]))
                assert set(j) == JOB_FIELDS
                if j["progress"] == 10:
                    gate.release(job["id"])
            assert seen[0][0] == "status"
            assert ("progress", "processing", 90) in seen
            assert seen[-1] == ("status", "completed", 100)
            # A finished job's stream is one event, then the end.
            again = [(e, j["status"]) async for e, j in api.events(job["id"])]
            assert again == [("status", "completed")]

    run(body())


def test_a_client_leaving_a_stream_is_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        gate = Gate()
        async with serve(tmp_path, gate) as api:
            job = await api.submit()
            url = f"{api.base_url}/api/generations/{job['id']}/events"
            server = api.runner.server
            assert server is not None

            def open_sockets() -> int:
                return sum(1 for h in server.connections if h.transport is not None)

            async with aiohttp.ClientSession() as other:
                headers = {"Authorization": f"Bearer {TOKENS['alice']}"}
                async with other.get(url, headers=headers) as resp:
                    assert (await resp.content.readline()).startswith(b"event: ")
                    before = open_sockets()
            await aeventually(
                lambda: open_sockets() < before, "the socket to close", 5.0
            )  # the server saw the client leave
            gate.release(job["id"])
            await api.wait_done(job["id"])
            await aeventually(
                lambda: api.app[EVENTS].listening() == 0, "no listener", 5.0
            )  # noticed at its next write

    run(body())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_server_shutdown_ends_open_streams(tmp_path: Path) -> None:
    async def body() -> None:
        gate = Gate()
        async with serve(tmp_path, gate) as api:
            job = await api.submit()
            events = api.events(job["id"])
            await anext(events)
            closing = asyncio.create_task(api.runner.cleanup())
            with contextlib.suppress(aiohttp.ClientError):
                async for _ in events:
                    pass
            await asyncio.wait_for(closing, 10)

    run(body())


# -- listing -------------------------------------------------------------------------------------


def test_list_pages_newest_first_and_filters_by_status(tmp_path: Path) -> None:
    async def body() -> None:
        gate = Gate()
        async with serve(tmp_path, gate) as api:
            ids = [(await api.submit(prompt=f"job {n}"))["id"] for n in range(5)]
            await api.submit("bob")
            gate.release(ids[1])
            await api.wait_done(ids[1])
            pages, cursor = [], None
            while True:
                query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
                status, page, _ = await api.call("GET", "/api/generations" + query)
                assert status == 200 and set(page) == {"items", "nextCursor"}
                pages.append([j["id"] for j in page["items"]])
                cursor = page["nextCursor"]
                if cursor is None:
                    break
            assert pages == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]
            _, page, _ = await api.call("GET", "/api/generations?status=completed")
            assert [j["id"] for j in page["items"]] == [ids[1]]
            assert page["nextCursor"] is None
            _, page, _ = await api.call("GET", "/api/generations?status=queued,processing")
            assert [j["id"] for j in page["items"]] == [ids[4], ids[3], ids[2], ids[0]]
            _, page, _ = await api.call("GET", "/api/generations?limit=100", "root")
            assert len(page["items"]) == 6
            bad = {"limit=0": "limit", "limit=101": "limit", "limit=x": "limit", "limit=²": "limit"}
            bad |= {"status=done": "status", "cursor=abc": "cursor", "cursor=1": "cursor"}
            for query, field in bad.items():
                status, err, _ = await api.call("GET", f"/api/generations?{query}")
                assert assert_error(status, err, 400, "invalid_request")["field"] == field
            for job_id in ids:
                gate.release(job_id)

    run(body())


# -- validation ----------------------------------------------------------------------------------

BAD_BODIES: list[tuple[Any, str | None]] = [
    ({}, "prompt"),
    ({"prompt": 1}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": " \n\t "}, "prompt"),
    ({"prompt": "x" * 4001}, "prompt"),
    ({"prompt": "x", "parameters": {"duration": 5}}, "parameters.duration"),
    ({"prompt": "x", "parameters": {"duration": "8"}}, "parameters.duration"),
    ({"prompt": "x", "parameters": {"aspectRatio": "4:3"}}, "parameters.aspectRatio"),
    ({"prompt": "x", "parameters": {"resolution": "480p"}}, "parameters.resolution"),
    ({"prompt": "x", "parameters": {"resolution": "4k", "duration": 4}}, "parameters.resolution"),
    ({"prompt": "x", "parameters": {"negativePrompt": "n" * 4001}}, "parameters.negativePrompt"),
    ({"prompt": "x", "parameters": {"seed": -1}}, "parameters.seed"),
    ({"prompt": "x", "parameters": {"seed": 2**70}}, "parameters.seed"),
    ({"prompt": "x", "parameters": {"fps": 24}}, "parameters.fps"),
    ({"prompt": "x", "parameters": None}, "parameters"),
    ({"prompt": "x", "priority": 11}, "priority"),
    ({"prompt": "x", "priority": -1}, "priority"),
    ({"prompt": "x", "priority": 1.5}, "priority"),
    ({"prompt": "x", "priority": "high"}, "priority"),
    ({"prompt": "x", "priority": True}, "priority"),
    ({"prompt": "x", "id": ""}, "id"),
    ({"prompt": "x", "id": "has space"}, "id"),
    ({"prompt": "x", "id": "a/b"}, "id"),
    ({"prompt": "x", "id": "x" * 129}, "id"),
    ({"prompt": "x", "id": 7}, "id"),
    ({"prompt": "x", "model": 3}, "model"),
    ({"prompt": "x", "colour": "red"}, "colour"),
    # issue 12 item 5: bounded names, known providers, no control characters, no dot ids
    ({"prompt": "x", "model": "m" * 129}, "model"),
    ({"prompt": "x", "provider": "v" * 129}, "provider"),
    ({"prompt": "x", "provider": "other"}, "provider"),
    ({"prompt": "a \x1b]0;owned\x07 fox"}, "prompt"),
    ({"prompt": "a fox\r\n"}, "prompt"),
    ({"prompt": "x\x00"}, "prompt"),
    ({"prompt": "x", "parameters": {"negativePrompt": "blur\x1b[2J"}}, "parameters.negativePrompt"),
    ({"prompt": "x", "id": "."}, "id"),
    ({"prompt": "x", "id": ".."}, "id"),
    ({"prompt": "x", "id": "..."}, "id"),
    ([], None),
    ("a string", None),
]
NOT_JSON = [
    b"",
    b"not json",
    b'{"prompt": "x"',
    b"\xff\xfe",
    b'{"prompt": "x"} trailing',
    b'{"prompt": "a \xff fox"}',  # invalid UTF-8 inside a string (was a 500)
    b'{"prompt": "x", "priority": 1.0, "model": "\xc3"}',  # ... on the float fallback path
]
JSON_TYPE = {"Content-Type": "application/json"}


def test_each_bad_body_is_a_400_naming_its_field_and_stores_nothing(tmp_path: Path) -> None:
    async def body() -> None:
        async with serve(tmp_path) as api:
            for bad, field in BAD_BODIES:
                status, err, _ = await api.call("POST", "/api/generations", json=bad)
                detail = assert_error(status, err, 400, "invalid_request")
                assert detail.get("field") == field, (bad, detail)
            status, err, _ = await api.call(
                "POST", "/api/generations", json={"prompt": "x", "id": "a\n"}
            )
            assert assert_error(status, err, 400, "invalid_request")["field"] == "id"
            for raw in NOT_JSON:
                status, err, _ = await api.call(
                    "POST", "/api/generations", data=raw, headers=JSON_TYPE
                )
                assert_error(status, err, 400, "invalid_json")
            big = json.dumps({"prompt": "x" * MAX_BODY_BYTES}).encode()
            status, err, _ = await api.call(
                "POST", "/api/generations", data=io.BytesIO(big), headers=JSON_TYPE
            )
            assert_error(status, err, 413, "payload_too_large")
            _, page, _ = await api.call("GET", "/api/generations", "root")
            assert page == {"items": [], "nextCursor": None}
            _, st, _ = await api.call("GET", "/api/queue/status")
            assert st["submitted"] == 0 and st["queued"] == 0
            # The document's request schema draws the same line as the server.
            _, doc, _ = await api.call("GET", "/api/openapi.json", None)
            check = schema_validator(doc, "GenerationRequest")
            for bad, _ in BAD_BODIES:
                assert not check.is_valid(bad), bad
            good = {"prompt": "ok", "parameters": {"resolution": "1080p"}, "id": "a.b"}
            assert check.is_valid(good)
            status, _, _ = await api.call("POST", "/api/generations", json=good)
            assert status == 202
            exactly_max = b'{"prompt": "x"}'.ljust(MAX_BODY_BYTES)
            status, _, _ = await api.call(
                "POST", "/api/generations", data=io.BytesIO(exactly_max), headers=JSON_TYPE
            )
            assert status == 202
            multiline = {"prompt": "a fox,\n\tthen snow", "parameters": {"negativePrompt": "a\tb"}}
            assert check.is_valid(multiline)
            status, _, _ = await api.call("POST", "/api/generations", json=multiline)
            assert status == 202

    run(body())


def test_valid_json_no_field_can_hold_is_a_400_not_a_500(tmp_path: Path) -> None:
    """JSON the typed decoder reads but plain values cannot hold: arrays nested far past
    Python's recursion limit (was a 500 with a RecursionError), an integer of 5,000 digits
    (was `invalid_json` naming no field)."""
    deep_unknown = b'{"prompt":"a","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep_params = b'{"prompt":"a","parameters":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    huge_seed = b'{"prompt":"a","parameters":{"seed":' + b"9" * 5000 + b"}}"

    async def body() -> None:
        async with serve(tmp_path) as api:
            for raw in (deep_unknown, deep_params):
                status, err, _ = await api.call(
                    "POST", "/api/generations", data=raw, headers=JSON_TYPE
                )
                assert_error(status, err, 400, "invalid_request")
            status, err, _ = await api.call(
                "POST", "/api/generations", data=huge_seed, headers=JSON_TYPE
            )
            assert assert_error(status, err, 400, "invalid_request")["field"] == "parameters.seed"
            _, st, _ = await api.call("GET", "/api/queue/status")
            assert st["submitted"] == 0

    run(body())


def test_only_json_bodies_are_read_and_a_missing_type_is_taken_as_json(tmp_path: Path) -> None:
    async def body() -> None:
        async with serve(tmp_path) as api:
            raw = b'{"prompt": "a fox"}'
            for ctype in (
                "text/plain",
                "application/x-www-form-urlencoded",
                "application/octet-stream",
                "multipart/form-data; boundary=x",
                "application/json; charset=latin-1",
            ):
                status, err, _ = await api.call(
                    "POST", "/api/generations", data=raw, headers={"Content-Type": ctype}
                )
                assert_error(status, err, 415, "unsupported_media_type")
            _, st, _ = await api.call("GET", "/api/queue/status")
            assert st["submitted"] == 0
            for ctype in (
                "application/json",
                "application/json; charset=UTF-8",
                "application/vnd.x+json",
            ):
                status, job, _ = await api.call(
                    "POST", "/api/generations", data=raw, headers={"Content-Type": ctype}
                )
                assert status == 202, (ctype, job)
            # No Content-Type at all (aiohttp would add one to `data=`: skip it).
            async with api.session.post(
                "/api/generations",
                data=raw,
                headers={"Authorization": f"Bearer {TOKENS['alice']}"},
                skip_auto_headers=["Content-Type"],
            ) as resp:
                assert resp.status == 202, await resp.text()

    run(body())


# -- auth ----------------------------------------------------------------------------------------


def test_auth_is_required_except_on_public_routes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def body() -> None:
        async with serve(tmp_path) as api:
            tries = [None, "Bearer k-nope-5e5e5e", "Basic k-alice-7f1e", "Bearer", "k-alice-7f1e"]
            for header in tries:
                headers = {} if header is None else {"Authorization": header}
                for method, path in [
                    ("POST", "/api/generations"),
                    ("GET", "/api/generations"),
                    ("GET", "/api/generations/x"),
                    ("GET", "/api/generations/x/events"),
                    ("DELETE", "/api/generations/x"),
                    ("GET", "/api/queue/status"),
                ]:
                    status, err, hdrs = await api.call(
                        method, path, None, headers=headers, json={"prompt": "x"}
                    )
                    assert_error(status, err, 401, "unauthorized")
                    assert hdrs["WWW-Authenticate"].startswith("Bearer")
            for path in ("/healthz", "/metrics", "/api/openapi.json"):
                status, _, _ = await api.call("GET", path, None)
                assert status == 200, path
            status, _, _ = await api.call("GET", "/api/queue/status", "root")
            assert status == 200
            _, page, _ = await api.call("GET", "/api/generations", "root")
            assert page["items"] == []

    run(body())
    for token in [*TOKENS.values(), "k-nope-5e5e5e"]:
        assert token not in caplog.text


def test_without_keys_every_private_route_is_refused(tmp_path: Path) -> None:
    async def body() -> None:
        async with serve(tmp_path, api_keys="") as api:
            status, err, _ = await api.call("POST", "/api/generations", json={"prompt": "x"})
            assert "no API keys are configured" in assert_error(status, err, 401)["message"]
            status, err, _ = await api.call("GET", "/api/generations")
            assert_error(status, err, 401, "unauthorized")
            status, health, _ = await api.call("GET", "/healthz", None)
            assert status == 200 and health == {"status": "ok"}

    run(body())
    for spec in ("secret-key-1", "=alice", "secret-key-1=a/b", "secret-key-1=*", "s=a,s=b"):
        with pytest.raises(ConfigError) as info:
            create_app(Config(data_dir=str(tmp_path), api_keys=spec))
        assert "secret" not in str(info.value)


# -- routes, errors, storage failures ----------------------------------------------------------


def test_unknown_routes_and_methods_answer_json(tmp_path: Path) -> None:
    async def body() -> None:
        async with serve(tmp_path) as api:
            status, err, _ = await api.call("GET", "/nope")
            assert_error(status, err, 404, "not_found")
            status, err, headers = await api.call("PUT", "/api/generations")
            assert_error(status, err, 405, "method_not_allowed")
            assert "POST" in headers["Allow"]
            status, err, _ = await api.call("PATCH", "/api/generations/abc")
            assert_error(status, err, 405, "method_not_allowed")
            status, err, _ = await api.call("POST", "/healthz")
            assert_error(status, err, 405, "method_not_allowed")

    run(body())


def test_a_store_that_refuses_writes_is_a_503(tmp_path: Path) -> None:
    async def body() -> None:
        async with serve(tmp_path) as api:
            queue = api.app[QUEUE]

            async def refuse(*args: Any, **kw: Any) -> Any:
                raise StorageError("database or disk is full")

            queue.asubmit = refuse  # type: ignore[method-assign]
            status, err, headers = await api.call("POST", "/api/generations", json={"prompt": "x"})
            assert_error(status, err, 503, "storage_unavailable")
            assert headers["Retry-After"]

    run(body())


def test_queue_status_and_metrics_show_the_same_figures(tmp_path: Path) -> None:
    async def body() -> None:
        async with serve(tmp_path) as api:
            job = await api.submit(priority=2)
            await api.wait_done(job["id"])
            status, st, _ = await api.call("GET", "/api/queue/status", "bob")
            assert status == 200
            for key in ("queued", "queuedByPriority", "inFlight", "oldestWaitS", "p95WaitS",
                        "avgProcessingS", "processedPerMinute", "successRate", "rateLimitHits",
                        "provider", "webhooks"):  # fmt: skip
                assert key in st, key
            assert st["submitted"] == 1 and st["completed"] == 1 and st["inFlight"] == 0
            async with api.session.get("/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                text = await resp.text()
            samples = dict(
                line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#")
            )
            assert float(samples["genqueue_jobs_submitted_total"]) == 1
            assert float(samples['genqueue_jobs_finished_total{status="completed"}']) == 1
            assert float(samples["genqueue_jobs_queued"]) == st["queued"] == 0
            assert float(samples["genqueue_jobs_in_flight"]) == 0
            assert float(samples["genqueue_success_rate"]) == st["successRate"] == 1.0
            assert 'genqueue_dispatch_info{dispatch="alarm"}' in samples
            assert "genqueue_wait_seconds_p95" in samples
            assert any(k.startswith("genqueue_http_responses_total{") for k in samples)

    run(body())


def test_openapi_document_is_valid_3_1_and_lists_the_routes(tmp_path: Path) -> None:
    async def body() -> None:
        async with serve(tmp_path) as api:
            async with api.session.get("/api/openapi.json") as resp:
                assert resp.status == 200
                doc = json.loads(await resp.read())
            assert doc["openapi"].startswith("3.1.")
            assert {
                "/api/generations",
                "/api/generations/{id}",
                "/api/generations/{id}/events",
                "/api/queue/status",
                "/metrics",
                "/healthz",
                "/api/openapi.json",
            } <= set(doc["paths"])
            assert {"post", "get"} <= set(doc["paths"]["/api/generations"])
            assert {"get", "delete"} <= set(doc["paths"]["/api/generations/{id}"])
            error = doc["components"]["schemas"]["ErrorDetail"]
            assert {"code", "message", "field"} <= set(error["properties"])
            validator = pytest.importorskip("openapi_spec_validator")
            validator.validate(doc)
            _, st, _ = await api.call("GET", "/api/queue/status")
            assert schema_validator(doc, "QueueStatus").is_valid(st)
            _, page, _ = await api.call("GET", "/api/generations")
            assert schema_validator(doc, "JobPage").is_valid(page)
            status, err, _ = await api.call("GET", "/api/generations/nope")
            assert status == 404 and schema_validator(doc, "ErrorBody").is_valid(err)

    run(body())


# -- local videos ----------------------------------------------------------------------------------


def test_videos_are_served_read_only_without_escaping_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    (root / "alice").mkdir(parents=True)
    (root / "alice" / "job-1.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    (root / "alice" / ".hidden.mp4").write_bytes(b"secret")
    (root / "alice" / "notes.txt").write_bytes(b"text")
    (tmp_path / "outside.mp4").write_bytes(b"outside")
    os.symlink(tmp_path / "outside.mp4", root / "alice" / "link.mp4")

    async def body() -> None:
        async with serve(tmp_path, video_root=root) as api:
            urls = api.app[QUEUE].video_urls
            assert urls is not None
            signed = urls.sign("/videos/alice/job-1.mp4")
            async with api.session.get(signed) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "video/mp4"
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                assert (await resp.read())[4:8] == b"ftyp"
            ranged = {"Range": "bytes=4-7"}
            async with api.session.get(signed, headers=ranged) as resp:
                assert resp.status == 206 and await resp.read() == b"ftyp"
            for name in (".hidden.mp4", "notes.txt", "missing.mp4", "link.mp4"):
                status, err, _ = await api.call("GET", urls.sign(f"/videos/alice/{name}"), None)
                assert_error(status, err, 404, "not_found")
            for path in (
                "/videos/alice/.hidden.mp4",
                "/videos/alice/notes.txt",
                "/videos/..%2Foutside.mp4/x.mp4",
                "/videos/alice/..%2F..%2Foutside.mp4",
                "/videos/%2E%2E/outside.mp4",
            ):
                status, err, _ = await api.call("GET", path, None)
                assert_error(status, err, 404, "not_found")
            status, _, _ = await api.call("PUT", signed, None, data=b"x")
            assert status == 405

    run(body())


def test_a_public_base_url_with_a_path_prefix_still_serves_signed_videos(tmp_path: Path) -> None:
    """Behind a proxy that serves us under `/gq` (GENQUEUE_PUBLIC_BASE_URL ends in `/gq`) and
    strips it, the route sees `/videos/u/n.mp4`: the signature covers that path, not the
    public URL's."""
    root = tmp_path / "videos"
    (root / "alice").mkdir(parents=True)
    (root / "alice" / "job-1.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))

    async def body() -> None:
        async with serve(tmp_path, video_root=root) as api:
            urls = api.app[QUEUE].video_urls
            assert urls is not None
            public = urls.sign("https://example.com/gq/videos/alice/job-1.mp4")
            query = urlsplit(public).query
            async with api.session.get(f"/videos/alice/job-1.mp4?{query}") as resp:
                assert resp.status == 200 and (await resp.read())[4:8] == b"ftyp"
            status, err, _ = await api.call("GET", f"/videos/alice/job-2.mp4?{query}", None)
            assert_error(status, err, 403, "forbidden")  # it signs that one video only

    run(body())


def test_local_videos_need_a_current_signature_and_are_re_signed_on_every_read(
    tmp_path: Path,
) -> None:
    """No key, another user's key or a bare path: 403. The job's URL works for anyone who
    holds it until it expires; reading the job again gives a fresh one."""
    clock = ManualClock(time.time())
    root = tmp_path / "data" / "videos"

    async def body() -> None:
        async with serve(tmp_path, clock=clock, video_url_ttl_s=600) as api:
            status, job, _ = await api.call("POST", "/api/generations", json={"prompt": "a cat"})
            assert status == 202
            events = [(e, j) async for e, j in api.events(job["id"])]
            assert events[-1][0] == "status" and events[-1][1]["status"] == "completed"
            streamed = urlsplit(events[-1][1]["result"]["videoUrl"])  # SSE: signed too
            assert set(parse_qs(streamed.query)) == {"expires", "signature"}
            (root / "alice").mkdir(parents=True, exist_ok=True)
            (root / "alice" / f"{job['id']}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
            _, done, _ = await api.call("GET", f"/api/generations/{job['id']}")
            url = urlsplit(done["result"]["videoUrl"])
            signed = f"{url.path}?{url.query}"
            query = parse_qs(url.query)
            for who in (None, "alice", "bob", "root"):  # a bare path: no key opens it
                status, err, _ = await api.call("GET", url.path, who)
                assert_error(status, err, 403, "forbidden")
            async with api.session.get(signed) as resp:  # no key needed: the URL is the key
                assert resp.status == 200 and resp.headers["X-Content-Type-Options"] == "nosniff"
            expires, signature = query["expires"][0], query["signature"][0]
            altered = [
                f"{url.path}?expires={int(expires) + 60}&signature={signature}",
                f"{url.path}?expires={expires}&signature={signature[:-2]}AA",
                f"{url.path}?expires={expires}",
                f"{url.path}?expires={expires}&signature=%C3%A9t%C3%A9",  # non-ASCII
                f"{url.path}?expires=%D9%A3&signature={signature}",
                f"/videos/bob/{job['id']}.mp4?{url.query}",
            ]
            for path in altered:
                status, err, _ = await api.call("GET", path, None)
                assert_error(status, err, 403, "forbidden")
            clock.advance(601 + 60)  # past the TTL (rounded up to the minute)
            status, err, _ = await api.call("GET", signed, None)
            assert_error(status, err, 403, "forbidden")
            _, again, _ = await api.call("GET", f"/api/generations/{job['id']}")
            fresh = urlsplit(again["result"]["videoUrl"])
            assert fresh.path == url.path and fresh.query != url.query
            _, page, _ = await api.call("GET", "/api/generations")
            assert page["items"][0]["result"]["videoUrl"] == again["result"]["videoUrl"]
            async with api.session.get(f"{fresh.path}?{fresh.query}") as resp:
                assert resp.status == 200

    run(body())


# -- one tenant cannot starve the rest (issue 12, item 4) ---------------------------------------


def test_a_submission_past_a_queue_cap_is_a_429_queue_full_storing_nothing(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        gated = Gate()
        async with serve(tmp_path, gated, max_concurrency=1, max_queued_per_user=1) as api:
            await api.submit(id="a1")
            await aeventually(
                lambda: "a1" in gated.running, "a1 running", 5.0
            )  # running: no longer waiting
            await api.submit(id="a2")
            status, err, headers = await api.call(
                "POST", "/api/generations", json={"prompt": "x", "id": "a3"}
            )
            assert "alice" in assert_error(status, err, 429, "queue_full")["message"]
            assert headers["Retry-After"]
            status, _, _ = await api.call("GET", "/api/generations/a3")
            assert status == 404
            # a known client id is answered as before; other users still have room
            status, job, _ = await api.call(
                "POST", "/api/generations", json={"prompt": "x", "id": "a2"}
            )
            assert status == 200 and job["id"] == "a2"
            await api.submit("bob", id="b1")
            _, doc, _ = await api.call("GET", "/api/openapi.json", None)
            assert "429" in doc["paths"]["/api/generations"]["post"]["responses"]
            for job_id in ("a1", "a2", "b1"):
                gated.release(job_id)

    run(body())


def test_a_keys_maximum_priority_is_enforced_and_admins_are_unlimited(tmp_path: Path) -> None:
    keys = "k-alice-7f1e=alice:maxpriority=3,k-bob-33a0=bob,k-root-c9d2=root:admin"

    async def body() -> None:
        async with serve(tmp_path, api_keys=keys) as api:
            status, err, _ = await api.call(
                "POST", "/api/generations", json={"prompt": "x", "priority": 4}
            )
            detail = assert_error(status, err, 400, "invalid_request")
            assert detail["field"] == "priority" and "3" in detail["message"]
            assert (await api.submit(priority=3))["priority"] == 3
            assert (await api.submit("bob", priority=10))["priority"] == 10
            assert (await api.submit("root", priority=10))["priority"] == 10
            _, st, _ = await api.call("GET", "/api/queue/status")
            assert st["submitted"] == 3

    run(body())
    for spec in ("k1=ops:admin:maxpriority=3", "k1=a:maxpriority=11", "k1=a:maxpriority=x"):
        with pytest.raises(ConfigError) as info:
            create_app(Config(data_dir=str(tmp_path), api_keys=spec))
        assert "maxpriority" in str(info.value) and "k1" not in str(info.value)


def test_event_streams_are_capped_per_key(tmp_path: Path) -> None:
    async def body() -> None:
        gate = Gate()
        async with serve(tmp_path, gate, max_streams_per_key=2) as api:
            job = await api.submit()
            url = f"{api.base_url}/api/generations/{job['id']}/events"
            alice = {"Authorization": f"Bearer {TOKENS['alice']}"}
            feed = {**alice, "Accept": "text/event-stream"}
            async with contextlib.AsyncExitStack() as held, aiohttp.ClientSession() as other:
                for _ in range(2):
                    resp = await held.enter_async_context(other.get(url, headers=alice))
                    assert resp.status == 200
                    assert (await resp.content.readline()).startswith(b"event: ")
                for path, headers in ((url, alice), (f"{api.base_url}/api/events", feed)):
                    async with other.get(path, headers=headers) as resp:
                        err = assert_error(resp.status, await resp.json(), 429, "too_many_streams")
                        assert "GENQUEUE_MAX_STREAMS_PER_KEY" in err["message"]
                # other keys are not affected; a snapshot without streaming is not a stream
                status, _, _ = await api.call("GET", "/api/events", "root")
                assert status == 200
                root = {"Authorization": f"Bearer {TOKENS['root']}"}
                async with other.get(url, headers=root) as resp:
                    assert resp.status == 200
            # The clients left: their streams no longer count once the server saw them go,
            # even before its handlers notice at their next write (a heartbeat, 15 s).
            streams, alice_key = api.app[STREAMS], Caller("alice", key_index=1)
            await aeventually(lambda: streams.open_streams(alice_key) == 0, "no stream", 5.0)
            async with aiohttp.ClientSession() as again, again.get(url, headers=alice) as resp:
                assert resp.status == 200
            gate.release(job["id"])

    run(body())


def test_a_body_that_does_not_arrive_in_time_is_a_408(tmp_path: Path) -> None:
    async def body() -> None:
        async with serve(tmp_path, body_timeout_s=0.3) as api:
            port = int(api.base_url.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /api/generations HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + TOKENS["alice"].encode() + b"\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                b'{"prompt":'
            )
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)  # to EOF: the server closes
            writer.close()
            head, _, raw = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), answer
            assert json.loads(raw)["error"]["code"] == "request_timeout"
            _, st, _ = await api.call("GET", "/api/queue/status")
            assert st["submitted"] == 0

    run(body())
