"""What a Vertex operation gives back and how the workflow takes it: several videos, inline
base64 decoded a slice at a time, `gs://` objects read through the Cloud Storage JSON API,
audio-filter blocks tried again a bounded number of times, prompt blocks final, and starts
whose answer was lost handled by the documented policy (never a silent second start)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
import pytest
from aiohttp import web

from genqueue.actors.generation import GenerationActor
from genqueue.clock import ManualClock
from genqueue.errors import ProviderError
from genqueue.models import GenerationParams, Job
from genqueue.providers.fake_veo import FakeVeoServer, build_mp4
from genqueue.providers.veo import Veo3Client, VideoParams, VideoRef
from genqueue.providers.veo.inline import inline_chunks
from genqueue.storage.videos import LocalStore

T = TypeVar("T")
TOKEN = "ya29.results-token"
PROJECT = "proj-r"
NOT_CHARGED = (
    "We encountered an issue with the audio for your prompt. Please try a different prompt. "
    "You have not been charged for this request."
)


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


class SkippingClock(ManualClock):
    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class ScriptedVertex:
    """A Vertex predictLongRunning / fetchPredictOperation server whose operations end as
    scripted: each start takes the next outcome (a dict for `done` ops, "hang", "cut": the
    operation starts but the 200 answer's JSON is cut short, as by a proxy, or "lost": every
    poll of the operation answers 404, as a host that does not know it does)."""

    def __init__(self, outcomes: list[Any]):
        self.outcomes = outcomes
        self.starts = 0
        self.bodies: list[dict[str, Any]] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.release = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        body = await request.json()
        if request.path.endswith(":predictLongRunning"):
            self.bodies.append(body)
            outcome = self.outcomes[min(self.starts, len(self.outcomes) - 1)]
            self.starts += 1
            if outcome == "hang":  # the request arrived; its answer never leaves
                await self.release.wait()
            model = request.path.rsplit("/", 1)[-1].split(":")[0]
            name = (
                f"projects/{PROJECT}/locations/us-central1/publishers/google/models/{model}"
                f"/operations/op{self.starts}"
            )
            self.results[name] = outcome
            if outcome == "cut":
                return web.Response(text=f'{{"name": "{name[:30]}', content_type="application/json")
            return web.json_response({"name": name})
        name = body["operationName"]
        if self.results[name] == "lost":
            error = {"code": 404, "message": f"Operation {name} not found.", "status": "NOT_FOUND"}
            return web.json_response({"error": error}, status=404)
        return web.json_response({"name": name, "done": True, **self.results[name]})


def video(data: bytes) -> dict[str, Any]:
    return {"bytesBase64Encoded": base64.b64encode(data).decode(), "mimeType": "video/mp4"}


def job(**params: Any) -> Job:
    return Job(
        id="j1",
        generation_id="j1",
        user_id="u",
        prompt="a heron",
        parameters=GenerationParams(**params),
        provider="veo3",
        model="veo-3.1-generate-001",
        priority=0,
        created_at=0.0,
        updated_at=0.0,
    )


async def generate(
    server: ScriptedVertex, tmp: Path, **actor: Any
) -> tuple[Any, GenerationActor, list[Any]]:
    """Run one job through the GenerationActor against `server`; (result or error, actor,
    checkpoints reported)."""
    checkpoints: list[Any] = []

    async def report(progress: int | None = None, checkpoint: Any = None) -> None:
        if checkpoint is not None:
            checkpoints.append(checkpoint)

    async with serving(server.app) as base, aiohttp.ClientSession() as session:
        client = Veo3Client(
            session,
            base_url=base,
            dialect="vertex",
            project=PROJECT,
            access_token=TOKEN,
            request_timeout_s=0.5,
        )
        store = LocalStore(tmp, "http://videos.test")
        await store.start()
        settings = {k: v for k, v in actor.items() if k not in ("job", "params")}
        gen = GenerationActor(
            client, store, clock=SkippingClock(), polling_interval_s=1, **settings
        )
        try:
            the_job = actor.pop("job", None) or job(**actor.pop("params", {}))
            outcome: Any = await gen(the_job, report)
        except ProviderError as exc:
            outcome = exc
        finally:
            server.release.set()
            await store.close()
    return outcome, gen, checkpoints


def test_every_sample_is_stored_and_listed(tmp_path: Path) -> None:
    clips = [build_mp4(20_000 + i) for i in range(3)]
    server = ScriptedVertex([{"response": {"videos": [video(c) for c in clips]}}])
    result, _, checkpoints = run(generate(server, tmp_path))
    name = checkpoints[-1]["video_name"]  # random, durable before the first upload
    keys = [f"videos/u/{name}.mp4", f"videos/u/{name}-1.mp4", f"videos/u/{name}-2.mp4"]
    assert [v.key for v in result.videos] == keys and result.video_key == keys[0]
    assert [v.video_url for v in result.videos] == [f"http://videos.test/{k}" for k in keys]
    assert result.video_url == result.videos[0].video_url
    for key, clip in zip(keys, clips, strict=True):
        assert (tmp_path / key).read_bytes() == clip


def test_an_audio_block_is_tried_again_a_bounded_number_of_times(tmp_path: Path) -> None:
    blocked = {"error": {"code": 3, "message": NOT_CHARGED}}
    ok = {"response": {"videos": [video(build_mp4(10_000))]}}
    server = ScriptedVertex([blocked, blocked, ok])
    result, _, checkpoints = run(generate(server, tmp_path / "a", audio_block_retries=2))
    assert (tmp_path / "a" / result.video_key).is_file() and server.starts == 3
    assert checkpoints[-1]["audio_blocks"] == 2  # durable: a restart keeps the count
    server = ScriptedVertex([blocked])
    err, _, _ = run(generate(server, tmp_path / "b", audio_block_retries=1))
    assert isinstance(err, ProviderError) and server.starts == 2
    assert (err.code, err.retryable) == ("audio_blocked", False)
    assert "not been charged" in err.message


def test_an_audio_block_google_did_not_charge_costs_nothing(tmp_path: Path) -> None:
    """Spend (issue 15): three paid-looking starts, two of them blocked with "You have not
    been charged": the job's spend is one start's price."""
    blocked = {"error": {"code": 3, "message": NOT_CHARGED}}
    ok = {"response": {"videos": [video(build_mp4(10_000))]}}
    server = ScriptedVertex([blocked, blocked, ok])
    priced = msgspec.structs.replace(job(), estimated_cost=3.2)
    result, _, checkpoints = run(generate(server, tmp_path, audio_block_retries=2, job=priced))
    assert result.video_key and server.starts == 3
    assert checkpoints[-1]["spent"] == pytest.approx(3.2)
    assert max(c.get("spent", 0) for c in checkpoints) == pytest.approx(3.2)


def test_a_blocked_prompt_is_final_at_once(tmp_path: Path) -> None:
    message = "The prompt could not be submitted. Support codes: 58061214"
    server = ScriptedVertex([{"error": {"code": 3, "message": message}}])
    err, _, _ = run(generate(server, tmp_path))
    assert (err.code, err.retryable, server.starts) == ("prompt_blocked", False, 1)
    assert "58061214" in err.message


@pytest.mark.parametrize("policy", ["fail", "retry"])
def test_an_ambiguous_start_follows_the_policy_and_is_counted(tmp_path: Path, policy: str) -> None:
    ok = {"response": {"videos": [video(build_mp4(10_000))]}}
    server = ScriptedVertex(["hang", ok])
    outcome, gen, _ = run(generate(server, tmp_path, ambiguous_start=policy))
    assert gen.stats()["ambiguousStarts"] == 1
    if policy == "fail":  # never a second (possibly paid) start
        assert isinstance(outcome, ProviderError) and server.starts == 1
        assert (outcome.code, outcome.retryable) == ("ambiguous_start", False)
        assert "VEO3_AMBIGUOUS_START=fail" in outcome.message
    else:  # knowingly started again
        assert (tmp_path / outcome.video_key).is_file() and server.starts == 2


@pytest.mark.parametrize("policy", ["fail", "retry"])
def test_a_start_answered_2xx_unreadably_is_ambiguous_never_resent_blindly(
    tmp_path: Path, policy: str
) -> None:
    """A 2xx to a start means Google accepted (and may bill) it: an answer that cannot be
    decoded is an ambiguous start (counted, VEO3_AMBIGUOUS_START), never a blind retry."""
    ok = {"response": {"videos": [video(build_mp4(10_000))]}}
    server = ScriptedVertex(["cut", ok])
    outcome, gen, _ = run(generate(server, tmp_path, ambiguous_start=policy))
    assert gen.stats()["ambiguousStarts"] == 1
    if policy == "fail":
        assert isinstance(outcome, ProviderError) and server.starts == 1
        assert (outcome.code, outcome.retryable) == ("ambiguous_start", False)
        assert "could not be read" in outcome.message
    else:
        assert (tmp_path / outcome.video_key).is_file() and server.starts == 2


@pytest.mark.parametrize("policy", ["fail", "retry"])
def test_a_404_to_a_poll_is_an_ambiguous_start_never_paid_again_silently(
    tmp_path: Path, policy: str
) -> None:
    """Veo forgot (or the wrong host does not know) an operation it accepted: it may have
    been paid, so a new start follows VEO3_AMBIGUOUS_START and is counted either way."""
    ok = {"response": {"videos": [video(build_mp4(10_000))]}}
    server = ScriptedVertex(["lost", ok])
    outcome, gen, _ = run(generate(server, tmp_path, ambiguous_start=policy))
    assert gen.stats()["ambiguousStarts"] == 1
    if policy == "fail":
        assert isinstance(outcome, ProviderError) and server.starts == 1
        assert (outcome.code, outcome.retryable) == ("operation_not_found", False)
        assert "VEO3_AMBIGUOUS_START=fail" in outcome.message
    else:
        assert (tmp_path / outcome.video_key).is_file() and server.starts == 2


def test_a_lost_operation_on_the_built_in_fake_starts_anew(tmp_path: Path) -> None:
    """The built-in fake (free) forgets its operations when `serve` restarts: its lost
    operations start anew whatever the policy, still counted."""
    ok = {"response": {"videos": [video(build_mp4(10_000))]}}
    server = ScriptedVertex(["lost", ok])
    outcome, gen, _ = run(generate(server, tmp_path, lost_operation="retry"))
    assert (tmp_path / outcome.video_key).is_file() and server.starts == 2
    assert gen.stats()["ambiguousStarts"] == 1


def test_a_vertex_operation_is_polled_at_its_own_location(tmp_path: Path) -> None:
    """Started in europe-west4, then VERTEX_LOCATION changed to us-central1 across a restart:
    the poll goes to europe-west4's host (which knows the operation), not us-central1's."""

    async def body() -> None:
        fakes = {"access_token": TOKEN, "latency_s": 0.0}
        async with (
            FakeVeoServer(**fakes) as europe,
            FakeVeoServer(**fakes) as us,
            aiohttp.ClientSession() as session,
        ):
            common = {"dialect": "vertex", "project": PROJECT, "access_token": TOKEN}
            before = Veo3Client(
                session, base_url=europe.base_url, location="europe-west4", **common
            )
            name = await before.start("a heron", VideoParams())
            assert "/locations/europe-west4/" in name
            hosts = {"europe-west4": europe.base_url, "us-central1": us.base_url}
            after = Veo3Client(
                session,
                base_url=us.base_url,
                location="us-central1",
                host_for_location=hosts.__getitem__,
                **common,
            )
            assert (await after.poll(name)).done and (europe.polls, us.polls) == (1, 0)
            fixed = Veo3Client(session, base_url=us.base_url, location="us-central1", **common)
            with pytest.raises(ProviderError) as err:  # a fixed host (VEO3_BASE_URL): as set
                await fixed.poll(name)
            assert err.value.code == "operation_not_found" and us.polls == 1

    run(body())


def test_a_start_that_never_connected_is_retried_freely(tmp_path: Path) -> None:
    async def body() -> None:
        async with aiohttp.ClientSession() as session:
            client = Veo3Client(
                session,
                base_url="http://127.0.0.1:1",
                dialect="vertex",
                project=PROJECT,
                access_token=TOKEN,
            )
            with pytest.raises(ProviderError) as info:
                await client.start("x", VideoParams())
            assert (info.value.code, info.value.retryable) == ("connection", True)

    run(body())


def test_inline_base64_is_decoded_a_slice_at_a_time() -> None:
    data = build_mp4(1_000_003)
    text = base64.b64encode(data).decode()
    chunks = list(inline_chunks(text, 65536))
    assert b"".join(chunks) == data
    assert max(len(c) for c in chunks) <= 65536 and len(chunks) > 10
    with pytest.raises(ProviderError):
        list(inline_chunks(text[:100] + "!" + text[101:], 65536))


def test_storage_uri_is_sent_and_gs_objects_come_through_the_json_api(tmp_path: Path) -> None:
    """`VERTEX_OUTPUT_GCS_URI` becomes `parameters.storageUri` (google-genai's
    `output_gcs_uri` -> `storageUri`), and a `gs://bucket/object` result is read at
    `/storage/v1/b/{bucket}/o/{object, escaped whole}?alt=media` with the same token."""
    clip = build_mp4(50_000)
    seen: list[tuple[str, str, str | None]] = []

    async def gcs(request: web.Request) -> web.StreamResponse:
        seen.append(
            (request.raw_path, request.query.get("alt", ""), request.headers.get("Authorization"))
        )
        return web.Response(body=clip, content_type="video/mp4")

    async def body() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", gcs)
        async with (
            serving(app) as gcs_base,
            FakeVeoServer(access_token=TOKEN) as fake,
            aiohttp.ClientSession() as session,
        ):
            client = Veo3Client(
                session,
                base_url=fake.base_url,
                dialect="vertex",
                project=PROJECT,
                access_token=TOKEN,
                output_gcs_uri="gs://out-bucket/runs/",
                gcs_base_url=gcs_base,
            )
            await client.start("x", VideoParams())
            assert fake.last_start_body is not None
            assert fake.last_start_body["parameters"]["storageUri"] == "gs://out-bucket/runs/"
            ref = VideoRef(uri="gs://out-bucket/runs/a b/#1?.mp4")
            got = b"".join([c async for c in client.download(ref)])
            assert got == clip

    run(body())
    assert seen == [
        (
            "/storage/v1/b/out-bucket/o/runs%2Fa%20b%2F%231%3F.mp4?alt=media",
            "media",
            f"Bearer {TOKEN}",
        )
    ]


def test_every_local_video_of_a_job_is_shown_at_a_signed_url() -> None:
    from urllib.parse import parse_qs, urlsplit

    from genqueue.models import JobResult, VideoOutput
    from genqueue.storage.videourls import VideoUrls
    from genqueue.wire import public_job

    urls = VideoUrls(b"s" * 32, ttl_s=600, clock=ManualClock())
    outputs = [VideoOutput(f"http://h/videos/u/n{s}.mp4", f"videos/u/n{s}.mp4") for s in ("", "-1")]
    result = JobResult(
        video_url=outputs[0].video_url, video_key=outputs[0].key, private=True, videos=outputs
    )
    shown = public_job(
        urls.present(msgspec.structs.replace(job(), status="completed", result=result))
    )
    assert shown.result is not None and len(shown.result.videos) == 2
    assert shown.result.videos[0].video_url == shown.result.video_url
    for video, output in zip(shown.result.videos, outputs, strict=True):
        url = urlsplit(video.video_url)
        query = parse_qs(url.query)
        assert url.path == urlsplit(output.video_url).path
        assert urls.verify(url.path, query["expires"][0], query["signature"][0])
