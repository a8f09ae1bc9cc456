"""Jobs through fal end to end, against real processes: `main.py serve` with FAL_KEY and
FAL_QUEUE_RUN_HOST pointing at the fake fal queue (tests/fake_fal_child.py, its own process,
over TLS with a throwaway CA that the server trusts through SSL_CERT_FILE, as it would trust
fal's real certificate), the fake Veo, and a webhook receiver that verifies signatures with
`standardwebhooks`. The fake fal is the one judged by fal-client (tests/test_fake_fal_sdk.py).

- a fal job completes: webhook, local video (signed URL), the provider recorded, one paid
  request, the fal key only ever sent to the queue host;
- `kill -9` while fal generates: the restarted server resumes the same request (its id is
  the checkpoint) and the fake counts exactly one paid start;
- a cancelled job cancels its fal request;
- GET /api/providers lists fal's models with their capabilities and prices.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers_procs import (
    Api,
    Child,
    FakeVeoProc,
    Receiver,
    Server,
    child_env,
    eventually,
    free_port,
    run,
    urlopen_status,
)
from tls_helpers import make_tls

FAL_KEY = "fal-e2e-key:0f3a"
CHILD = str(Path(__file__).resolve().parent / "fake_fal_child.py")
pytestmark = pytest.mark.timeout(90)


class FakeFalProc:
    def __init__(self, logs: Path):
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = logs / "tls" / "cert.pem"
        make_tls(logs / "tls")
        args = [CHILD, str(self.port), str(self.ca), str(logs / "tls" / "key.pem"), FAL_KEY]
        self.child = Child(args, logs, "fake-fal", child_env())

    def start(self) -> FakeFalProc:
        self.child.start()
        return self

    def stop(self) -> None:
        self.child.stop()

    def _ssl(self) -> Any:
        import ssl

        return ssl.create_default_context(cafile=str(self.ca))

    async def state(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async def check() -> tuple[bool, Any]:
            try:
                async with session.get(f"{self.url}/_fake/state", ssl=self._ssl()) as resp:
                    return resp.status == 200, await resp.json()
            except aiohttp.ClientConnectionError:
                return False, None

        got: dict[str, Any] = await eventually(check, "the fake fal's state", 20)
        return got

    async def control(self, session: aiohttp.ClientSession, **body: Any) -> None:
        async with session.post(f"{self.url}/_fake/control", json=body, ssl=self._ssl()) as r:
            assert r.status == 200, await r.text()


@dataclass
class Stack:
    logs: Path
    veo: FakeVeoProc
    fal: FakeFalProc
    receiver: Receiver

    def server(
        self, name: str, data_dir: Path | None = None, env: dict[str, str] | None = None
    ) -> Server:
        env = {
            "FAL_KEY": FAL_KEY,
            "FAL_QUEUE_RUN_HOST": f"127.0.0.1:{self.fal.port}",
            "SSL_CERT_FILE": str(self.fal.ca),
        } | (env or {})
        return Server(
            self.logs, name, fake=self.veo, receiver=self.receiver, env=env, data_dir=data_dir
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("fal-e2e")
    veo, fal, receiver = FakeVeoProc(logs), FakeFalProc(logs), Receiver(logs)
    try:
        yield Stack(logs, veo.start(), fal.start(), receiver.start())
    finally:
        veo.stop()
        fal.stop()
        receiver.stop()


async def paid(fal: FakeFalProc, session: aiohttp.ClientSession, prompt: str) -> list[Any]:
    return [r for r in (await fal.state(session))["requests"] if r["prompt"] == prompt]


def test_a_fal_job_completes_with_webhook_and_local_video(stack: Stack) -> None:
    async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
        prompt = "fal e2e: a heron at dawn"
        job = await api.submit(
            {"prompt": prompt, "provider": "fal", "parameters": {"resolution": "1080p"}}
        )
        assert (job["provider"], job["model"]) == ("fal", "fal-ai/veo3.1")
        done = await api.wait_job(job["id"], 30)
        assert done["status"] == "completed", done
        assert urlopen_status(done["result"]["videoUrl"]) == 200
        hooks = await stack.receiver.events_for(session, {job["id"]}, {"generation.completed"}, 10)
        assert any(d["payload"]["jobId"] == job["id"] for d in hooks[job["id"]])
        requests = await paid(stack.fal, session, prompt)
        assert len(requests) == 1 and requests[0]["model"] == "fal-ai/veo3.1"
        status, listing = await api.call("GET", "/api/providers")
        assert status == 200
        fal = next(p for p in listing["providers"] if p["name"] == "fal")
        assert fal["fake"] is False
        veo31 = next(m for m in fal["models"] if m["id"] == "fal-ai/veo3.1")
        assert veo31["capabilities"]["resolutions"] == ["720p", "1080p", "4k"]
        assert veo31["price"]["perS"]["1080p"] == 0.40

    with stack.server("fal-complete") as server:
        run(server, scenario, 60)


def test_a_parameter_fal_does_not_take_is_a_400_and_nothing_is_stored(stack: Stack) -> None:
    async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
        bad = [
            ({"model": "fal-ai/veo3.1/fast", "parameters": {"resolution": "4k"}}, "resolution"),
            ({"parameters": {"sampleCount": 2}}, "sampleCount"),
            ({"parameters": {"personGeneration": "allow_all"}}, "personGeneration"),
            ({"model": "veo-3.1-generate-preview"}, "model"),
        ]
        for extra, field in bad:
            status, body = await api.call(
                "POST", "/api/generations", json={"prompt": "x", "provider": "fal", **extra}
            )
            assert status == 400, (extra, body)
            assert field in body["error"]["field"], body
        status, page = await api.call("GET", "/api/generations")
        assert page["items"] == []

    with stack.server("fal-bad") as server:
        run(server, scenario, 30)


def test_kill_9_while_fal_generates_resumes_the_same_request(stack: Stack) -> None:
    data_dir = stack.logs / "fal-kill-data"
    prompt = "fal e2e: resumed after kill -9"

    async def before(api: Api, session: aiohttp.ClientSession) -> str:
        await stack.fal.control(session, hold=True)
        job = await api.submit({"prompt": prompt, "provider": "fal"})

        async def polled() -> tuple[bool, Any]:
            requests = await paid(stack.fal, session, prompt)
            return bool(requests) and requests[0]["statusReads"] >= 1, requests

        await eventually(polled, "the fal request polled (its id checkpointed)", 20)
        return str(job["id"])

    first = stack.server("fal-kill-1", data_dir).start()
    try:
        job_id = run(first, before, 40)
    finally:
        first.child.sigkill()

    async def after(api: Api, session: aiohttp.ClientSession) -> None:
        await stack.fal.control(session, hold=False)
        done = await api.wait_job(job_id, 30)
        assert done["status"] == "completed", done
        requests = await paid(stack.fal, session, prompt)
        assert len(requests) == 1, requests  # resumed, never paid twice
        assert requests[0]["statusReads"] >= 2  # polled again by the second server

    with stack.server("fal-kill-2", data_dir) as second:
        run(second, after, 60)


def test_cancelling_a_fal_job_cancels_its_request(stack: Stack) -> None:
    prompt = "fal e2e: cancelled"

    async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
        await stack.fal.control(session, hold=True)
        try:
            job = await api.submit({"prompt": prompt, "provider": "fal"})

            async def polled() -> tuple[bool, Any]:
                requests = await paid(stack.fal, session, prompt)
                return bool(requests) and requests[0]["statusReads"] >= 1, requests

            await eventually(polled, "the fal request polled", 20)
            status, _ = await api.call("DELETE", f"/api/generations/{job['id']}")
            assert status in (200, 202)

            async def cancelled() -> tuple[bool, Any]:
                requests = await paid(stack.fal, session, prompt)
                return requests[0]["cancelled"], requests

            await eventually(cancelled, "fal's cancel called", 20)
            assert (await api.wait_job(job["id"], 20))["status"] == "cancelled"
        finally:
            await stack.fal.control(session, hold=False)
        await asyncio.sleep(0)

    with stack.server("fal-cancel") as server:
        run(server, scenario, 60)


def test_spend_matches_the_fakes_paid_starts_and_the_daily_budget_refuses(stack: Stack) -> None:
    """fal-ai/veo3.1 at 720p with audio: 8 s x $0.40 = $3.20 a start; fast, 4 s, silent:
    4 s x $0.10 = $0.40. A budget of 5 a day takes one of the first, then only the second."""
    prompt = "fal e2e: spend"

    async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
        first = await api.submit({"prompt": prompt, "provider": "fal"})
        status, refused = await api.call(
            "POST", "/api/generations", json={"prompt": prompt, "provider": "fal"}
        )
        assert status == 429 and refused["error"]["code"] == "budget_exceeded", refused
        cheap = await api.submit(
            {
                "prompt": prompt,
                "provider": "fal",
                "model": "fal-ai/veo3.1/fast",
                "parameters": {"duration": 4, "generateAudio": False},
            }
        )
        jobs = await api.wait_all([first["id"], cheap["id"]], 30)
        assert all(j["status"] == "completed" for j in jobs.values()), jobs
        requests = await paid(stack.fal, session, prompt)
        by_model = {
            m: sum(r["model"] == m for r in requests)
            for m in ("fal-ai/veo3.1", "fal-ai/veo3.1/fast")
        }
        assert by_model == {"fal-ai/veo3.1": 1, "fal-ai/veo3.1/fast": 1}
        expected = by_model["fal-ai/veo3.1"] * 8 * 0.40 + by_model["fal-ai/veo3.1/fast"] * 4 * 0.10
        spend = (await api.queue_status())["spend"]
        assert spend["total"] == pytest.approx(expected)
        assert spend["byProvider"] == {"fal": pytest.approx(expected)}
        assert spend["inFlight"] == 0
        assert list(spend["byUserToday"].values()) == [pytest.approx(expected)]
        # committed 3.60 now: another $3.20 job would pass 5
        status, refused = await api.call(
            "POST", "/api/generations", json={"prompt": prompt, "provider": "fal"}
        )
        assert status == 429 and refused["error"]["code"] == "budget_exceeded", refused
        async with session.get(f"{api.url}/metrics") as resp:
            text = await resp.text()
        line = next(
            x for x in text.splitlines() if x.startswith('genqueue_spend_total{provider="fal"}')
        )
        assert float(line.split()[-1]) == pytest.approx(expected)

    env = {"GENQUEUE_BUDGET_PER_USER_DAY": "5"}
    with stack.server("fal-spend", env=env) as server:
        run(server, scenario, 60)


def test_a_veo_quota_pause_sends_fallback_jobs_to_fal_while_the_others_wait(
    stack: Stack,
) -> None:
    prompt = "fal e2e: fallback"

    async def scenario(api: Api, session: aiohttp.ClientSession) -> None:
        await stack.veo.faults(session, fail_starts={"status": 429, "count": 1, "quota": "day"})
        first = await api.submit({"prompt": prompt})  # Veo answers: daily quota spent

        async def paused() -> tuple[bool, Any]:
            status = await api.queue_status()
            return status["pausedReason"] == "quota", status

        await eventually(paused, "Veo to pause for its daily quota", 20)
        veo_only = await api.submit({"prompt": prompt})
        either = await api.submit({"prompt": prompt, "provider": ["veo", "fal"]})
        done = await api.wait_job(either["id"], 30)
        assert done["status"] == "completed", done
        assert (done["provider"], done["model"]) == ("fal", "fal-ai/veo3.1")
        # no fallback asked: they wait for Veo (the refused one waits out the quota)
        assert (await api.job(veo_only["id"]))["status"] == "queued"
        assert (await api.job(first["id"]))["status"] == "retry_wait"
        requests = await paid(stack.fal, session, prompt)
        assert len(requests) == 1
        status = await api.queue_status()
        assert status["providers"]["fal"]["pausedUntil"] is None
        assert status["spend"]["byProvider"] == {"fal": pytest.approx(len(requests) * 8 * 0.40)}
        assert "veo3" not in status["spend"]["byProvider"]  # the refused start cost nothing

    with stack.server("fal-fallback") as server:
        run(server, scenario, 60)
