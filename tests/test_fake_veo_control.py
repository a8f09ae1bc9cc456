"""The fake Veo's HTTP controls (`GET /_fake/stats`, `POST /_fake/faults`), which the fault
suite uses to steer a fake running as its own process. Real HTTP on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from conftest import run

from genqueue.errors import ProviderError
from genqueue.providers.fake_veo import FakeVeoServer
from genqueue.providers.veo3 import Veo3Client, VideoParams

pytestmark = pytest.mark.timeout(20)


async def post_faults(session: aiohttp.ClientSession, base: str, body: Any) -> Any:
    async with session.post(f"{base}/_fake/faults", json=body) as resp:
        return resp.status, await resp.json()


async def stats(session: aiohttp.ClientSession, base: str) -> Any:
    async with session.get(f"{base}/_fake/stats") as resp:
        assert resp.status == 200
        return await resp.json()


def test_faults_armed_over_http_reach_the_client_in_order() -> None:
    async def scenario() -> None:
        async with FakeVeoServer() as fake, aiohttp.ClientSession() as session:
            client = Veo3Client(session, base_url=fake.base_url, api_key="k")
            status, reply = await post_faults(
                session,
                fake.base_url,
                {
                    "fail_starts": {"status": 429, "count": 2, "retry_after_s": 0.5},
                    "fail_polls": {"status": 503},
                    "fail_downloads": {"status": 500},
                    "cut_downloads": 1,
                },
            )
            assert status == 200
            armed = reply["faults"]
            assert (armed["fail_starts"], armed["fail_polls"], armed["fail_downloads"]) == (2, 1, 1)
            assert armed["cut_downloads"] == 1
            for _ in range(2):
                with pytest.raises(ProviderError) as err:
                    await client.start("a fox", VideoParams())
                assert (err.value.status, err.value.retry_after_s) == (429, 0.5)
            name = await client.start("a fox", VideoParams())
            with pytest.raises(ProviderError) as err:
                await client.poll(name)
            assert err.value.status == 503 and err.value.retryable
            op = await client.poll(name)
            assert op.done
            with pytest.raises(ProviderError) as err:
                _ = [c async for c in client.download(op.videos[0])]
            assert err.value.status == 500
            with pytest.raises(ProviderError) as err:  # cut half-way
                _ = [c async for c in client.download(op.videos[0])]
            assert err.value.code == "connection_cut"
            body = b"".join([c async for c in client.download(op.videos[0])])
            assert len(body) == fake.video_size
            seen = await stats(session, fake.base_url)
            assert seen["starts"] == 1 and len(seen["startTimes"]) == 1
            assert seen["faults"]["fail_starts"] == seen["faults"]["cut_downloads"] == 0

    run(scenario())


def test_malformed_json_rate_limit_and_bad_controls() -> None:
    async def scenario() -> None:
        async with FakeVeoServer() as fake, aiohttp.ClientSession() as session:
            client = Veo3Client(session, base_url=fake.base_url, api_key="k")
            await post_faults(session, fake.base_url, {"malformed_json_next": True})
            with pytest.raises(ProviderError) as err:
                await client.start("a fox", VideoParams())
            assert err.value.code == "ambiguous_start"  # a 2xx: Google started it
            seen = await stats(session, fake.base_url)
            assert seen["starts"] == 1 and len(seen["operations"]) == 1
            assert seen["faults"]["malformed_json_next"] is False
            await post_faults(session, fake.base_url, {"rate_limit_per_minute": 2})
            await client.start("a fox", VideoParams())
            with pytest.raises(ProviderError) as err:
                await client.start("a fox", VideoParams())
            assert err.value.status == 429
            assert (await stats(session, fake.base_url))["rateLimited"] == 1
            status, reply = await post_faults(session, fake.base_url, {"fail_startz": {}})
            assert status == 400 and "fail_startz" in reply["error"]["message"]
            status, _ = await post_faults(session, fake.base_url, {"cut_download": "yes"})
            assert status == 400

    run(scenario())


def test_hangs_are_released_on_demand_and_can_hang_again() -> None:
    async def scenario() -> None:
        async with FakeVeoServer() as fake, aiohttp.ClientSession() as session:
            client = Veo3Client(session, base_url=fake.base_url, api_key="k")
            for _ in range(2):  # a release, then a second hang works again
                await post_faults(session, fake.base_url, {"hang_starts": True})
                start = asyncio.ensure_future(client.start("a fox", VideoParams()))
                await asyncio.sleep(0.2)
                assert not start.done(), "the start did not hang"
                _, reply = await post_faults(
                    session, fake.base_url, {"release": True, "hang_starts": False}
                )
                assert reply["faults"]["hang_starts"] is False
                with pytest.raises(ProviderError) as err:
                    await asyncio.wait_for(start, 5)
                assert err.value.status == 503
            await post_faults(session, fake.base_url, {"hang_polls": True, "cut_download": True})
            _, reply = await post_faults(session, fake.base_url, {"clear": True})
            armed = reply["faults"]
            assert armed["hang_polls"] is False and armed["cut_download"] is False
            name = await client.start("a fox", VideoParams())
            assert (await asyncio.wait_for(client.poll(name), 5)).done

    run(scenario())
