"""The fake fal queue judged by fal's own SDK (fal-client, the `dev` extra): if fal-client
cannot complete a request against it, the fake is wrong. The project's FalClient runs the
same cases and must reach the same outcome.

What the fake pins, from fal's documentation (read 2026-12):
- the queue API (docs.fal.ai "Queue"): `POST queue.fal.run/{model}` answers `request_id`,
  `status_url`, `response_url`, `cancel_url`; the status is IN_QUEUE (`queue_position`),
  IN_PROGRESS (`logs`) or COMPLETED (`logs`, `metrics`, an `error` if it failed); the result
  is read at `response_url`; cancel is `PUT …/cancel`. fal-client 1.0.3's
  `AsyncRequestHandle` parses exactly these fields (`_parse_status`: `queue_position`,
  `logs`, `metrics`, `error`, `error_type`) and builds `https://{FAL_QUEUE_RUN_HOST}/…`;
- the two models' inputs and output (genqueue.providers.fake_fal.shapes):
  `duration` "4s" | "6s" | "8s", `resolution` "720p" | "1080p" | "4k" (fast: no 4k),
  `aspect_ratio`, `generate_audio`, output `{"video": {"url", "content_type", "file_name",
  "file_size"}}`.

fal-client reads FAL_QUEUE_RUN_HOST at import and always speaks https://, so the fake serves
TLS with a throwaway certificate that the SDK's httpx trusts through SSL_CERT_FILE; the SDK
runs in a subprocess (tests/sdk/drive_fal.py) with that environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from tls_helpers import make_tls

from genqueue.errors import ProviderError
from genqueue.providers.fake_fal import FakeFal, FakeFalServer
from genqueue.providers.fake_fal.app import VIDEO_SIZE
from genqueue.providers.fal import FalClient
from genqueue.providers.veo.shapes import VideoParams

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "sdk" / "drive_fal.py"
KEY = "fal-key-7c2d:secret"
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    arguments: dict[str, Any]
    expect: str  # "video" | "http_422" | "safety" | "cancelled"
    cancel: bool = False
    params: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("veo31_default", "fal-ai/veo3.1", {"prompt": "a red fox"}, "video"),
    Case(
        "veo31_1080p_silent",
        "fal-ai/veo3.1",
        {"prompt": "a fox", "duration": "8s", "resolution": "1080p", "generate_audio": False},
        "video",
        params={"resolution": "1080p", "generate_audio": False},
    ),
    Case(
        "fast_portrait_4s",
        "fal-ai/veo3.1/fast",
        {"prompt": "a fox", "duration": "4s", "aspect_ratio": "9:16"},
        "video",
        params={"duration": 4, "aspect_ratio": "9:16"},
    ),
    Case(
        "fast_refuses_4k",
        "fal-ai/veo3.1/fast",
        {"prompt": "a fox", "duration": "8s", "resolution": "4k"},
        "http_422",
        params={"resolution": "4k"},
    ),
    Case("safety_block", "fal-ai/veo3.1", {"prompt": "BLOCKME please"}, "safety"),
    Case("cancelled", "fal-ai/veo3.1", {"prompt": "a fox"}, "cancelled", cancel=True),
]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    return make_tls(tmp_path_factory.mktemp("tls"))


def fal_server(context: ssl.SSLContext) -> FakeFalServer:
    return FakeFalServer(ssl_context=context, key=KEY, queue_polls=1, progress_polls=2)


async def drive_sdk(case: Case, fake: FakeFal, ca_file: Path) -> dict[str, Any]:
    kept = ("PATH", "HOME", "LANG", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in kept}
    env |= {
        "FAL_KEY": KEY,
        "FAL_QUEUE_RUN_HOST": fake.base_url.removeprefix("https://"),
        "SSL_CERT_FILE": str(ca_file),
    }
    spec = {"model": case.model, "arguments": case.arguments, "cancel": case.cancel}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DRIVER),
        json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 50)
    assert proc.returncode == 0, f"the SDK driver failed:\n{err.decode()[-4000:]}"
    result: dict[str, Any] = json.loads(out)
    return result


def sdk_outcome(out: dict[str, Any]) -> str:
    if out.get("completed_error_type") == "request_cancelled":
        return "cancelled"
    if "error" in out:
        status = out["error"]["status"]
        if status == 422 and "content" in out["error"]["detail"].lower():
            return "safety"
        return f"http_{status}"
    assert out["video_bytes"] == VIDEO_SIZE
    return "video"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_fal_client_sdk_completes_against_the_fake(
    case: Case, tls: tuple[ssl.SSLContext, Path]
) -> None:
    context, ca_file = tls

    async def body() -> None:
        async with fal_server(context) as fake:
            out = await drive_sdk(case, fake, ca_file)
            assert sdk_outcome(out) == case.expect, out
            if case.expect == "http_422":
                assert fake.paid_starts[case.model] == 0  # refused: nothing charged
                return
            assert fake.paid_starts[case.model] == 1
            if case.expect == "video":
                # the SDK saw each state the fake went through, in order
                assert out["statuses"] == ["Queued", "InProgress", "InProgress", "Completed"]
                video = out["result"]["video"]
                assert video["content_type"] == "video/mp4"
                assert video["file_size"] == VIDEO_SIZE
                assert fake.downloads == 1
            if case.expect == "safety":
                assert out["completed_error_type"] == "content_policy_violation"
            if case.expect == "cancelled":
                assert fake.cancels == 1

    run(body())


def test_the_fake_refuses_a_wrong_key(tls: tuple[ssl.SSLContext, Path]) -> None:
    context, ca_file = tls

    async def body() -> None:
        async with fal_server(context) as fake:
            fake.key = "another-key"
            out = await drive_sdk(CASES[0], fake, ca_file)
            assert out["error"]["status"] == 401
            assert not fake.paid_starts

    run(body())


# -- the project's own client, the same cases ----------------------------------------------------


async def drive_ours(case: Case, fake: FakeFal, ca_file: Path) -> str:
    client_context = ssl.create_default_context(cafile=str(ca_file))
    params = VideoParams(**case.params)
    async with aiohttp.ClientSession() as session:
        client = FalClient(
            session, key=KEY, base_url=fake.base_url, model=case.model, ssl=client_context
        )
        try:
            name = await client.start(case.arguments["prompt"], params)
            if case.cancel:
                await client.cancel(name)
            for _ in range(20):
                op = await client.poll(name)
                if op.done:
                    break
            else:
                raise AssertionError("never done")
            chunks = [c async for c in client.download(op.videos[0])]
            assert sum(map(len, chunks)) == VIDEO_SIZE
            return "video"
        except ProviderError as exc:
            if exc.code == "safety_blocked":
                return "safety"
            if exc.status == 422:
                return "http_422"
            if exc.code == "operation_error" and "cancel" in exc.message:
                return "cancelled"
            raise


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_our_client_reaches_the_same_outcomes(case: Case, tls: tuple[ssl.SSLContext, Path]) -> None:
    context, ca_file = tls

    async def body() -> None:
        async with fal_server(context) as fake:
            assert await drive_ours(case, fake, ca_file) == case.expect
            assert fake.paid_starts[case.model] == (0 if case.expect == "http_422" else 1)
            calls = list(fake.requests.values())
            assert len(calls) == (0 if case.expect == "http_422" else 1)

    run(body())
