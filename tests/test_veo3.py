"""Veo3Client against the fake Veo server, over real HTTP on loopback."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import struct
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import aiohttp
import msgspec
import pytest
from conftest import run

from genqueue.clock import ManualClock
from genqueue.errors import InvalidRequest, ProviderError
from genqueue.providers.fake_veo import FakeVeo, FakeVeoServer, build_mp4, iter_mp4
from genqueue.providers.veo3 import (
    DEFAULT_MODEL,
    GEMINI_DEFAULT_MODEL,
    MAX_REDIRECTS,
    Veo3Client,
    VideoParams,
    VideoRef,
    validate_params,
)

KEY = "test-key-5f3a9c1e"
TOKEN = "ya29.test-token-77b2"
T = TypeVar("T")


VERTEX = {"dialect": "vertex", "access_token": TOKEN, "project": "proj-1", "api_key": None}


@contextlib.asynccontextmanager
async def veo(
    client: dict[str, Any] | None = None, **fake_options: Any
) -> AsyncIterator[tuple[FakeVeo, Veo3Client]]:
    """A fake Veo on a free loopback port and a client pointed at it (Gemini dialect, KEY)."""
    fake_options.setdefault("api_key", KEY)
    fake_options.setdefault("access_token", TOKEN)
    async with FakeVeoServer(**fake_options) as fake, aiohttp.ClientSession() as session:
        options = {"base_url": fake.base_url, "api_key": KEY} | (client or {})
        yield fake, Veo3Client(session, **options)


async def fetch(client: Veo3Client, video: VideoRef, chunk_size: int = 1 << 16) -> bytes:
    return b"".join([chunk async for chunk in client.download(video, chunk_size)])


async def failure(coro: Coroutine[Any, Any, Any]) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await coro
    return info.value


def top_level_boxes(data: bytes) -> list[bytes]:
    kinds, offset = [], 0
    while offset < len(data):
        size, kind = struct.unpack_from(">I4s", data, offset)
        assert size >= 8
        kinds.append(kind)
        offset += size
    assert offset == len(data)
    return kinds


# -- the happy path ---------------------------------------------------------------------------


def test_start_poll_download_gemini() -> None:
    clock = ManualClock()

    async def body() -> None:
        async with veo(clock=clock, latency_s=30, video_size=100_000) as (fake, client):
            name = await client.start("a red fox in the snow", VideoParams())
            assert name.startswith(f"models/{GEMINI_DEFAULT_MODEL}/operations/")
            running = await client.poll(name)
            assert (running.done, running.videos) == (False, [])
            clock.advance(30)
            done = await client.poll(name)
            assert done.done and len(done.videos) == 1
            data = await fetch(client, done.videos[0], chunk_size=4096)
            assert data == build_mp4(100_000)
            assert data[4:8] == b"ftyp"
            # The playable clip (moov first, ffmpeg's own free box), then the padding.
            assert top_level_boxes(data) == [b"ftyp", b"moov", b"free", b"mdat", b"free"]
            assert (fake.starts, fake.polls, fake.downloads) == (1, 2, 1)
            assert fake.operations[name].polls == 2
            assert fake.requests[-1].headers["x-goog-api-key"] == KEY

    run(body())


def test_start_body_is_camel_case_without_audio_or_seed() -> None:
    async def body() -> None:
        async with veo() as (fake, client):
            params = VideoParams(
                duration=6,
                aspect_ratio="9:16",
                negative_prompt="blur",
                person_generation="allow_adult",
            )
            # google-genai 1.x, _GenerateVideosConfig_to_mldev: "seed parameter is not
            # supported in Gemini API." -- refused, never silently dropped, and nothing paid.
            for refused in ({"seed": 42}, {"generate_audio": False}):
                with pytest.raises(InvalidRequest):
                    await client.start("x", msgspec.structs.replace(params, **refused))
            assert fake.starts == 0
            await client.start("a lighthouse", params)
            assert fake.last_start_body == {
                "instances": [{"prompt": "a lighthouse"}],
                "parameters": {
                    "aspectRatio": "9:16",
                    "resolution": "720p",
                    "durationSeconds": 6,
                    "negativePrompt": "blur",
                    "personGeneration": "allow_adult",
                    "sampleCount": 1,
                },
            }

    run(body())


def test_large_download_streams_in_chunks() -> None:
    size = 64 * 1024 * 1024
    expected = hashlib.sha256()
    for chunk in iter_mp4(size):
        expected.update(chunk)

    async def body() -> None:
        async with veo(video_size=size) as (_fake, client):
            op = await client.poll(await client.start("a long one", VideoParams()))
            digest, total, biggest = hashlib.sha256(), 0, 0
            async for chunk in client.download(op.videos[0], chunk_size=1 << 20):
                digest.update(chunk)
                total += len(chunk)
                biggest = max(biggest, len(chunk))
            assert total == size and biggest <= 1 << 20
            assert digest.hexdigest() == expected.hexdigest()

    run(body(), timeout_s=30)


# -- errors from Veo --------------------------------------------------------------------------


def test_429_is_retryable_with_retry_after() -> None:
    async def body() -> None:
        async with veo() as (fake, client):
            fake.fail_starts(status=429, count=2, retry_after_s=7)
            for _ in range(2):
                err = await failure(client.start("x", VideoParams()))
                assert (err.retryable, err.status, err.retry_after_s) == (True, 429, 7.0)
            assert await client.start("x", VideoParams())
            assert fake.starts == 1

    run(body())


def test_rate_limit_per_minute() -> None:
    clock = ManualClock()

    async def body() -> None:
        async with veo(clock=clock, rate_limit_per_minute=2) as (fake, client):
            await client.start("one", VideoParams())
            clock.advance(10)
            await client.start("two", VideoParams())
            err = await failure(client.start("three", VideoParams()))
            assert err.retryable and err.code == "rate_limited" and err.retry_after_s == 50
            assert (fake.rate_limited, fake.starts_per_minute()) == (1, 2)
            clock.advance(50)
            await client.start("three", VideoParams())
            assert (fake.starts, fake.starts_per_minute()) == (3, 2)

    run(body())


def test_5xx_on_poll_is_retryable() -> None:
    async def body() -> None:
        async with veo() as (fake, client):
            name = await client.start("x", VideoParams())
            fake.fail_polls(status=503)
            err = await failure(client.poll(name))
            assert (err.retryable, err.status, err.code) == (True, 503, "server_error")
            assert (await client.poll(name)).done

    run(body())


def test_non_json_error_body_gives_a_clear_message() -> None:
    async def body() -> None:
        async with veo() as (fake, client):
            fake.fail_starts(status=502, html=True)
            err = await failure(client.start("x", VideoParams()))
            assert err.retryable and err.status == 502
            assert "HTTP 502" in err.message and "non-JSON body" in err.message

    run(body())


def test_safety_block_is_permanent_with_reason() -> None:
    async def body() -> None:
        async with veo() as (_fake, client):
            name = await client.start("something [unsafe]", VideoParams())
            err = await failure(client.poll(name))
            assert (err.retryable, err.code) == (False, "safety_blocked")
            assert "Responsible AI" in err.message and "58061214" in err.message

    run(body())


@pytest.mark.parametrize(
    ("grpc_code", "retryable", "code"),
    [(3, False, "prompt_blocked"), (13, True, "operation_error"), (14, True, "operation_error")],
)
def test_operation_error(grpc_code: int, retryable: bool, code: str) -> None:
    """Vertex reports a blocked prompt as a done operation with error.code 3 (INVALID_ARGUMENT)
    and a support code: permanent. INTERNAL and UNAVAILABLE may pass on a new operation."""

    async def body() -> None:
        async with veo() as (_fake, client):
            name = await client.start(f"x [op-error:{grpc_code}]", VideoParams())
            err = await failure(client.poll(name))
            assert (err.retryable, err.code) == (retryable, code)
            assert f"gRPC code {grpc_code}" in err.message

    run(body())


def test_400_is_permanent_with_googles_message() -> None:
    async def body() -> None:
        async with veo() as (fake, client):
            err = await failure(client.start("please [bad-request]", VideoParams()))
            assert (err.retryable, err.status, err.code) == (False, 400, "bad_request")
            assert err.message == "Request contains an invalid argument."
            assert fake.starts == 0

    run(body())


def test_404_unknown_model_says_so() -> None:
    async def body() -> None:
        async with veo() as (_fake, client):
            err = await failure(client.start("x", VideoParams(), model="veo-3.0-generate-001"))
            assert (err.retryable, err.status, err.code) == (False, 404, "model_not_found")
            assert "Veo does not serve the model 'veo-3.0-generate-001'" in err.message
            assert "not found for API version v1beta" in err.message

    run(body())


def test_404_on_poll_is_operation_not_found() -> None:
    async def body() -> None:
        async with veo() as (_fake, client):
            err = await failure(client.poll(f"models/{GEMINI_DEFAULT_MODEL}/operations/nope"))
            assert (err.retryable, err.code) == (False, "operation_not_found")
            assert "operation not found" in err.message

    run(body())


def test_wrong_or_missing_key_is_refused_and_never_echoed() -> None:
    wrong = "wrong-key-0d9e8f7a"

    async def body() -> None:
        async with veo(client={"api_key": wrong}) as (fake, client):
            err = await failure(client.start("x", VideoParams()))
            # Google answers a wrong key 400 INVALID_ARGUMENT with ErrorInfo API_KEY_INVALID.
            assert (err.retryable, err.status, err.code) == (False, 400, "auth")
            assert "refused the API key" in err.message
            for text in (str(err), repr(err), err.message, repr(client)):
                assert wrong not in text and KEY not in text
            fake.fail_starts(status=401)
            assert (await failure(client.start("x", VideoParams()))).code == "auth"
        async with veo(client={"api_key": None}) as (_fake, client):
            err = await failure(client.start("x", VideoParams()))
            assert (err.status, err.code) == (403, "auth")

    run(body())


def test_malformed_json_is_ambiguous_on_a_start_and_retryable_on_a_poll() -> None:
    """A 2xx start answer that cannot be read was accepted (and maybe billed) by Google: an
    ambiguous start, not retryable. A malformed poll answer is retryable (polling is free)."""

    async def body() -> None:
        async with veo() as (fake, client):
            fake.malformed_json_next = True
            err = await failure(client.start("x", VideoParams()))
            assert (err.retryable, err.code) == (False, "ambiguous_start")
            assert fake.starts == 1 and len(fake.operations) == 1  # Google did start it
            name = await client.start("x", VideoParams())
            fake.malformed_json_next = True
            err = await failure(client.poll(name))
            assert (err.retryable, err.code) == (True, "malformed_response")
            assert (await client.poll(name)).name == name  # the next poll reads fine

    run(body())


# -- transport failures -----------------------------------------------------------------------


def test_hanging_start_is_ambiguous_and_hanging_poll_times_out_retryably() -> None:
    """A start whose answer never came may have been paid for: it is `ambiguous_start`, not a
    plain retryable timeout (the GenerationActor applies VEO3_AMBIGUOUS_START to it)."""

    async def body() -> None:
        async with veo(client={"request_timeout_s": 0.3}) as (fake, client):
            name = await client.start("x", VideoParams())
            fake.hang_starts = fake.hang_polls = True
            err = await failure(client.start("x", VideoParams()))
            assert (err.retryable, err.code) == (False, "ambiguous_start")
            assert "may have started" in err.message
            assert (await failure(client.poll(name))).code == "timeout"
            assert fake.starts == 1

    run(body())


def test_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def body() -> None:
        async with aiohttp.ClientSession() as session:
            client = Veo3Client(session, base_url=f"http://127.0.0.1:{port}", api_key=KEY)
            err = await failure(client.start("x", VideoParams()))
            assert (err.retryable, err.code) == (True, "connection")
            assert KEY not in err.message

    run(body())


def test_cut_download_is_retryable() -> None:
    async def body() -> None:
        async with veo() as (fake, client):
            op = await client.poll(await client.start("x", VideoParams()))
            fake.cut_download = True
            err = await failure(fetch(client, op.videos[0]))
            assert (err.retryable, err.code) == (True, "connection_cut")
            fake.cut_download = False
            assert await fetch(client, op.videos[0]) == build_mp4(fake.video_size)

    run(body())


def test_download_errors_are_mapped() -> None:
    async def body() -> None:
        async with veo() as (fake, client):
            op = await client.poll(await client.start("x", VideoParams()))
            fake.fail_downloads(status=500)
            assert (await failure(fetch(client, op.videos[0]))).retryable
            gone = VideoRef(uri=f"{fake.base_url}/v1beta/files/expired:download?alt=media")
            err = await failure(fetch(client, gone))
            assert (err.retryable, err.code) == (False, "video_not_found")

    run(body())


# -- redirects and credentials ------------------------------------------------------------------


def test_redirect_to_another_origin_does_not_carry_the_key() -> None:
    async def body() -> None:
        async with veo() as (fake, client), FakeVeoServer() as storage:
            op = await client.poll(await client.start("x", VideoParams()))
            fake.redirect_downloads_to = f"{storage.base_url}/media/video.mp4"
            assert await fetch(client, op.videos[0]) == build_mp4(fake.video_size)
            assert fake.requests[-1].headers["x-goog-api-key"] == KEY
            assert [r.path_qs for r in storage.requests] == ["/media/video.mp4"]
            for request in storage.requests:
                assert "x-goog-api-key" not in request.headers
                assert "authorization" not in request.headers
                assert KEY not in str(request.headers)

    run(body())


def test_same_origin_relative_redirect_keeps_the_key() -> None:
    async def body() -> None:
        async with veo() as (fake, client):
            op = await client.poll(await client.start("x", VideoParams()))
            fake.redirect_downloads_to = "/media/video.mp4"
            assert await fetch(client, op.videos[0]) == build_mp4(fake.video_size)
            assert fake.requests[-1].path_qs == "/media/video.mp4"
            assert fake.requests[-1].headers["x-goog-api-key"] == KEY

    run(body())


def test_poll_uri_on_another_origin_gets_no_key() -> None:
    async def body() -> None:
        async with veo() as (_fake, client), FakeVeoServer() as storage:
            data = await fetch(client, VideoRef(uri=f"{storage.base_url}/media/v.mp4"))
            assert data[4:8] == b"ftyp"
            assert "x-goog-api-key" not in storage.requests[0].headers

    run(body())


def test_redirect_loop_stops() -> None:
    async def body() -> None:
        async with veo() as (fake, client):
            op = await client.poll(await client.start("x", VideoParams()))
            assert op.videos[0].uri is not None
            fake.redirect_downloads_to = op.videos[0].uri
            err = await failure(fetch(client, op.videos[0]))
            assert (err.retryable, err.code) == (False, "too_many_redirects")
            assert sum("/files/" in r.path_qs for r in fake.requests) == MAX_REDIRECTS + 1

    run(body())


# -- the Vertex dialect -------------------------------------------------------------------------


def test_vertex_start_poll_inline_download() -> None:
    clock = ManualClock()

    async def body() -> None:
        async with veo(VERTEX, clock=clock, latency_s=5) as (fake, client):
            name = await client.start("a harbour", VideoParams(seed=7, sample_count=2))
            assert name.startswith(
                f"projects/proj-1/locations/us-central1/publishers/google/models/"
                f"{DEFAULT_MODEL}/operations/"
            )
            assert fake.last_start_body is not None
            assert fake.last_start_body["parameters"]["seed"] == 7
            assert not (await client.poll(name)).done
            clock.advance(5)
            op = await client.poll(name)
            assert len(op.videos) == 2 and op.videos[0].data_b64 is not None
            assert fake.requests[-1].path_qs.endswith(f"{DEFAULT_MODEL}:fetchPredictOperation")
            assert fake.requests[-1].headers["authorization"] == f"Bearer {TOKEN}"
            assert await fetch(client, op.videos[0], 1000) == build_mp4(fake.video_size)

    run(body())


def test_vertex_uri_download_and_bad_token() -> None:
    async def body() -> None:
        async with veo(VERTEX, vertex_inline_max_bytes=0) as (fake, client):
            op = await client.poll(await client.start("a harbour", VideoParams()))
            assert op.videos[0].uri and op.videos[0].data_b64 is None
            assert await fetch(client, op.videos[0]) == build_mp4(fake.video_size)
            assert fake.requests[-1].headers["authorization"] == f"Bearer {TOKEN}"
        async with veo(VERTEX | {"access_token": "ya29.stolen"}) as (_fake, client):
            err = await failure(client.start("x", VideoParams()))
            assert (err.status, err.code) == (401, "auth") and "stolen" not in err.message

    run(body())


def test_vertex_safety_block() -> None:
    async def body() -> None:
        async with veo(VERTEX) as (_fake, client):
            name = await client.start("[unsafe] thing", VideoParams())
            assert (await failure(client.poll(name))).code == "safety_blocked"

    run(body())


def test_inline_bad_base64_is_permanent() -> None:
    async def body() -> None:
        async with aiohttp.ClientSession() as session:
            client = Veo3Client(session, base_url="http://127.0.0.1:9", api_key=KEY)
            ok = base64.b64encode(b"abc" * 10).decode()
            assert await fetch(client, VideoRef(data_b64=ok), 7) == b"abc" * 10
            err = await failure(fetch(client, VideoRef(data_b64="not base64!")))
            assert not err.retryable

    run(body())


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (VideoParams(duration=5), "duration"),
        (VideoParams(aspect_ratio="1:1"), "aspect_ratio"),
        (VideoParams(resolution="1080p", duration=4), "resolution"),
        (VideoParams(resolution="4k", duration=6), "resolution"),
        (VideoParams(resolution="8k"), "resolution"),
        (VideoParams(sample_count=0), "sample_count"),
    ],
)
def test_validate_params_names_the_field(params: VideoParams, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_params(params)
    assert info.value.field == field


def test_valid_params_pass() -> None:
    for params in (VideoParams(), VideoParams(duration=4), VideoParams(resolution="4k")):
        validate_params(params)


def test_invalid_params_cost_no_call() -> None:
    async def body() -> None:
        async with veo() as (fake, client):
            with pytest.raises(InvalidRequest):
                await client.start("x", VideoParams(duration=5))
            with pytest.raises(InvalidRequest):
                await client.start("   ", VideoParams())
            assert len(fake.requests) == 0

    run(body())


def test_quota_failure_detail_per_day_is_recognised() -> None:
    from genqueue.providers.veo.failures import http_error

    body = (
        b'{"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED",'
        b' "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations":'
        b' [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel"}]}]}}'
    )
    err = http_error(429, body, {}, call="start", model="m", credential="key", quota_pause_s=99)
    assert (err.code, err.retry_after_s) == ("quota_exhausted", 99)
    per_minute = body.replace(b"PerDay", b"PerMinute")
    err = http_error(
        429,
        per_minute,
        {"Retry-After": "7"},
        call="start",
        model="m",
        credential="k",
        quota_pause_s=99,
    )
    assert (err.code, err.retry_after_s) == ("rate_limited", 7)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (
            "models/veo-3.1-generate-001 is not found for API version v1beta, or is not "
            "supported for predictLongRunning. Call ListModels to see the available models.",
            "model_not_found",
        ),
        (
            "Publisher Model `projects/p/locations/us-central1/publishers/google/models/veo-x`"
            " was not found or your project does not have access to it.",
            "no_access",
        ),
    ],
)
def test_a_404_on_start_says_not_served_or_no_access(message: str, code: str) -> None:
    """Gemini's "not found for API version" means the door does not serve the id; Vertex's
    "not found or your project does not have access" cannot tell, and says both."""
    from genqueue.providers.veo.failures import http_error

    body = msgspec.json.encode({"error": {"code": 404, "message": message, "status": "NOT_FOUND"}})
    err = http_error(404, body, {}, call="start", model="veo-x", credential="k", quota_pause_s=1)
    assert (err.code, err.retryable, err.status) == (code, False, 404)
    assert message in err.message
