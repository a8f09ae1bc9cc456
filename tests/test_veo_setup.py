"""Which door, host and model a configuration means; the start check; what a request may ask."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers_procs import MAIN, ROOT, free_port
from test_cli import base_env

from genqueue import Config, Job, parse_request
from genqueue.actors.bridge import LoopThread
from genqueue.config import load_config
from genqueue.errors import ConfigError, InvalidRequest
from genqueue.providers.fake_veo import FakeVeoServer
from genqueue.providers.veo import Veo3Client, VideoParams, resolve
from genqueue.providers.veo.startup import check_models
from genqueue.requests import Routing, new_job

KEY = "setup-key-1"


def job_for(cfg: Config, request: dict[str, Any]) -> Job:
    """The job a submission of `request` makes (what JobQueue.submit checks first)."""
    req = parse_request(request)
    return new_job(req, "u", now_s=0.0, routes=Routing(cfg)(req))


def settings(**env: str) -> Any:
    return resolve(load_config(env=env))


def test_door_host_and_model_follow_the_configuration(tmp_path: Path) -> None:
    gemini = settings(VEO3_API_KEY=KEY)
    assert (gemini.dialect, gemini.base_url, gemini.model, gemini.fake) == (
        "gemini",
        "https://generativelanguage.googleapis.com",
        "veo-3.1-generate-preview",
        False,
    )
    vertex = settings(VERTEX_PROJECT="p1", VERTEX_LOCATION="europe-west4")
    assert (vertex.dialect, vertex.base_url, vertex.model) == (
        "vertex",
        "https://europe-west4-aiplatform.googleapis.com",
        "veo-3.1-generate-001",
    )
    assert settings(VERTEX_PROJECT="p1", VERTEX_LOCATION="global").base_url == (
        "https://aiplatform.googleapis.com"
    )
    assert vertex.location_hosts  # an operation is polled at its own location's host
    based = settings(VERTEX_PROJECT="p1", VEO3_BASE_URL="http://127.0.0.1:9")
    assert not based.location_hosts and not settings(VEO3_API_KEY=KEY).location_hosts
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps({"type": "service_account", "project_id": "from-adc"}))
    adc = settings(GOOGLE_APPLICATION_CREDENTIALS=str(key_file))
    assert (adc.dialect, adc.project) == ("vertex", "from-adc")
    express = settings(VEO3_DIALECT="vertex", VEO3_API_KEY=KEY)
    assert express.express and express.base_url == "https://aiplatform.googleapis.com"
    forced = settings(VEO3_DIALECT="gemini", VERTEX_PROJECT="p1", VEO3_API_KEY=KEY)
    assert forced.dialect == "gemini"
    assert settings(VEO3_API_KEY=KEY, VEO3_BASE_URL="http://127.0.0.1:9/").base_url == (
        "http://127.0.0.1:9"
    )
    assert settings().fake  # nothing set: the built-in fake, on the Gemini door
    many = settings(VEO3_API_KEY=KEY, VEO3_MODELS="veo-3.1-fast-generate-preview, x")
    assert many.models == ("veo-3.1-generate-preview", "veo-3.1-fast-generate-preview", "x")
    with pytest.raises(ConfigError, match="VEO3_MODELS"):
        settings(VEO3_API_KEY=KEY, VEO3_MODELS="../../v1beta/files")
    with pytest.raises(ConfigError, match="VERTEX_PROJECT"):
        settings(VEO3_DIALECT="vertex", HOME=str(tmp_path))


def test_express_mode_calls_the_publisher_model_with_the_key() -> None:
    """google-genai, vertexai=True + api_key: base `https://aiplatform.googleapis.com/`, no
    `projects/…` prefix, `x-goog-api-key`: `{base}/v1/publishers/google/models/{m}:…`."""
    seen: list[tuple[str, str | None]] = []

    async def body() -> None:
        from aiohttp import web

        async def record(request: web.Request) -> web.Response:
            seen.append((request.path, request.headers.get("x-goog-api-key")))
            name = "publishers/google/models/veo-3.1-generate-001/operations/op1"
            return web.json_response({"name": name})

        app = web.Application()
        app.router.add_post("/{tail:.*}", record)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession() as session:
                client = Veo3Client(session, base_url=base, dialect="vertex", api_key=KEY)
                name = await client.start("x", VideoParams())
                await client.poll(name)
        finally:
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(body(), 10))
    model = "/v1/publishers/google/models/veo-3.1-generate-001"
    assert seen == [
        (f"{model}:predictLongRunning", KEY),
        (f"{model}:fetchPredictOperation", KEY),
    ]


@pytest.mark.parametrize("bad", ["../../v1beta/files", "x/../../../_fake/faults?", "a b", ".."])
def test_a_model_outside_veo3_models_is_a_400_and_never_reaches_veo(
    tmp_path: Path, bad: str
) -> None:
    async def body() -> None:
        async with FakeVeoServer(api_key=KEY) as fake, aiohttp.ClientSession() as session:
            client = Veo3Client(session, base_url=fake.base_url, api_key=KEY)
            with pytest.raises(InvalidRequest) as info:
                await client.start("x", VideoParams(), model=bad)
            assert info.value.field == "model"
            assert len(fake.requests) == 0

    asyncio.run(asyncio.wait_for(body(), 10))
    cfg = load_config(env={"GENQUEUE_DATA_DIR": str(tmp_path)})
    with pytest.raises(InvalidRequest) as info:
        job_for(cfg, {"prompt": "x", "model": bad})
    assert info.value.field == "model" and "not offered" in info.value.message
    assert job_for(cfg, {"prompt": "x"}).model == "veo-3.1-generate-preview"


IMAGE = {"bytesBase64Encoded": base64.b64encode(b"\x89PNG fake").decode(), "mimeType": "image/png"}


@pytest.mark.parametrize(
    ("env", "parameters", "field"),
    [
        ({}, {"seed": 7}, "parameters.seed"),  # the Gemini door takes no seed
        ({}, {"generateAudio": False}, "parameters.generateAudio"),
        ({}, {"sampleCount": 2}, "parameters.sampleCount"),
        ({"VERTEX_PROJECT": "p"}, {"resolution": "4k"}, "parameters.resolution"),
        ({"VERTEX_PROJECT": "p"}, {"sampleCount": 5}, "parameters.sampleCount"),
        ({"VERTEX_PROJECT": "p"}, {"lastFrame": IMAGE}, "parameters.lastFrame"),
        ({"VERTEX_PROJECT": "p"}, {"referenceImages": [IMAGE] * 4}, "parameters.referenceImages"),
        (
            {"VERTEX_PROJECT": "p", "VEO3_MODEL": "veo-3.0-generate-001"},
            {"aspectRatio": "9:16", "resolution": "1080p"},
            "parameters.aspectRatio",
        ),
        (
            {"VERTEX_PROJECT": "p", "VEO3_MODEL": "veo-3.1-lite-generate-001"},
            {"referenceImages": [IMAGE]},
            "parameters.referenceImages",
        ),
        (
            {},
            {"image": {"bytesBase64Encoded": "not base64!", "mimeType": "image/png"}},
            "parameters.image.bytesBase64Encoded",
        ),
    ],
)
def test_requests_follow_the_capability_table(
    tmp_path: Path, env: dict[str, str], parameters: dict[str, Any], field: str
) -> None:
    cfg = load_config(env={"GENQUEUE_DATA_DIR": str(tmp_path), **env})
    with pytest.raises(InvalidRequest) as info:
        job_for(cfg, {"prompt": "x", "parameters": parameters})
    assert info.value.field == field, info.value.message


def test_what_the_capability_table_allows_is_accepted(tmp_path: Path) -> None:
    vertex = load_config(env={"GENQUEUE_DATA_DIR": str(tmp_path), "VERTEX_PROJECT": "p"})
    params = {
        "seed": 7,
        "sampleCount": 4,
        "generateAudio": False,
        "image": IMAGE,
        "lastFrame": IMAGE,
        "referenceImages": [IMAGE] * 3,
        "resolution": "1080p",
        "personGeneration": "allow_adult",
    }
    job = job_for(vertex, {"prompt": "x", "parameters": params})
    assert job.model == "veo-3.1-generate-001" and job.parameters.sample_count == 4
    gemini = load_config(env={"GENQUEUE_DATA_DIR": str(tmp_path)})
    four_k = {"resolution": "4k", "referenceImages": [IMAGE], "aspectRatio": "9:16"}
    job_for(gemini, {"prompt": "x", "parameters": four_k})


# -- the start check ------------------------------------------------------------------------


def test_check_models_answers_ok_refused_or_unknown() -> None:
    async def body() -> None:
        async with FakeVeoServer(api_key=KEY) as fake:
            env = {"VEO3_API_KEY": KEY, "VEO3_BASE_URL": fake.base_url}
            assert (await check_models(load_config(env=env))).verdict == "ok"
            gone = await check_models(load_config(env=env | {"VEO3_MODEL": "veo-3.0-generate-001"}))
            assert gone.verdict == "refused"
            assert "VEO3_MODEL='veo-3.0-generate-001'" in gone.message
            assert "Vertex AI" in gone.message and "VEO3_DIALECT=vertex" in gone.message
            extra = await check_models(load_config(env=env | {"VEO3_MODELS": "veo-2-gone"}))
            assert extra.verdict == "refused" and "VEO3_MODELS='veo-2-gone'" in extra.message
            vertex = {
                "VEO3_DIALECT": "vertex",
                "VERTEX_PROJECT": "p",
                "VEO3_BASE_URL": fake.base_url,
                "VERTEX_ACCESS_TOKEN": "tok",
                "VEO3_MODEL": "veo-9",
            }
            refused = await check_models(load_config(env=vertex))
            assert refused.verdict == "refused" and "not served on Vertex AI" in refused.message
        unreachable = {"VEO3_API_KEY": KEY, "VEO3_BASE_URL": f"http://127.0.0.1:{free_port()}"}
        down = await check_models(load_config(env=unreachable))
        assert down.verdict == "unknown" and "could not check" in down.message

    asyncio.run(asyncio.wait_for(body(), 30))


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_start_with_an_unserved_model_exits_non_zero_naming_veo3_model(
    tmp_path: Path, command: str
) -> None:
    import subprocess

    loop_thread = LoopThread()
    loop = loop_thread.start()
    fake = FakeVeoServer(api_key=KEY)
    asyncio.run_coroutine_threadsafe(fake.__aenter__(), loop).result(10)
    try:
        env = base_env(
            VEO3_API_KEY=KEY, VEO3_BASE_URL=fake.base_url, VEO3_MODEL="veo-3.1-generate-001x"
        )
        args = ["serve", "--port", str(free_port()), "--data-dir", str(tmp_path)]
        if command == "worker":  # the worker checks the model before it touches SQS or S3
            env |= {"GENQUEUE_DISPATCH": "sqs", "GENQUEUE_STORAGE": "s3", "S3_BUCKET": "b"}
            env |= {
                "SQS_ENDPOINT_URL": "http://127.0.0.1:9",
                "S3_ENDPOINT_URL": "http://127.0.0.1:9",
            }
            args = ["worker"]
        done = subprocess.run(
            [sys.executable, MAIN, *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        asyncio.run_coroutine_threadsafe(fake.__aexit__(None, None, None), loop).result(10)
        loop_thread.stop()
    assert done.returncode == 5, done.stderr
    assert "VEO3_MODEL='veo-3.1-generate-001x'" in done.stderr
    assert "Veo on Vertex AI" in done.stderr
    assert KEY not in done.stderr + done.stdout
