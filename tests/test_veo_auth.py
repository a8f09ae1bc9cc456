"""Vertex credentials by ADC (google-auth) against a real token endpoint on loopback.

The token endpoint checks what Google's does for a service-account key: the JWT-bearer
grant (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`), the assertion signed with
the key (verified with google-auth's own `jwt.decode` and the public key), posted to the
key's `token_uri`. Its tokens live 60 s of the *simulated* clock, which the fake Veo uses to
refuse an expired token with 401. google-auth stamps `expiry = utcnow() + expires_in` in real
time; the client turns that into a lifetime and counts it on the injected clock, so an hour
of simulated time needs a refresh every half minute, and real time barely moves.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt
from helpers_jobs import a_job

from genqueue.actors.generation import GenerationActor
from genqueue.clock import ManualClock
from genqueue.errors import ProviderError
from genqueue.providers.fake_veo import FakeVeoServer
from genqueue.providers.veo import Veo3Client
from genqueue.providers.veo.adc import BearerAuth
from genqueue.providers.veo.google_auth import load_adc
from genqueue.storage.videos import LocalStore

T = TypeVar("T")
TOKEN_LIFETIME_S = 60
# google-auth's service_account signs the grant for Google's token endpoint whatever the
# key's token_uri (`"aud": _GOOGLE_OAUTH2_TOKEN_ENDPOINT`); the token_uri is only where the
# grant is sent. The endpoint below checks the audience Google checks.
AUDIENCE = "https://oauth2.googleapis.com/token"
PROJECT = "proj-auth"


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


class SkippingClock(ManualClock):
    """Simulated time that jumps ahead whenever the workflow sleeps (a time-skipping test
    clock): nothing waits in real time, and time never moves unless someone waits."""

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


class TokenEndpoint:
    """A real OAuth token endpoint for one service-account key."""

    def __init__(self, clock: ManualClock, public_pem: str):
        self.clock, self.public_pem = clock, public_pem
        self.issued: dict[str, float] = {}
        self.revoked: set[str] = set()
        self.refuse_all = False
        self.url = ""

    def check(self, token: str) -> str:
        """What the fake Veo asks of a token issuer (fake_veo.auth: live, expired, unknown)."""
        if self.refuse_all or token in self.revoked or token not in self.issued:
            return "unknown"
        return "live" if self.valid(token) else "expired"

    def valid(self, token: str) -> bool:
        issued = self.issued.get(token)
        return (
            issued is not None
            and token not in self.revoked
            and self.clock.now() < issued + TOKEN_LIFETIME_S
        )

    async def handle(self, request: web.Request) -> web.Response:
        """`POST /token` (the fake Veo serves it too, beside its routes)."""
        return await self.token(request)

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:  # signature, audience and lifetime, as Google checks them
            claims = jwt.decode(str(form["assertion"]), certs=self.public_pem, audience=AUDIENCE)
        except (ValueError, KeyError) as exc:
            body = {"error": "invalid_grant", "error_description": str(exc)}
            return web.json_response(body, status=400)
        assert claims["iss"] == f"sa@{PROJECT}.iam.gserviceaccount.com"
        assert "cloud-platform" in claims["scope"]
        token = f"ya29.sim-{len(self.issued) + 1}"
        self.issued[token] = self.clock.now()
        return web.json_response(
            {"access_token": token, "expires_in": TOKEN_LIFETIME_S, "token_type": "Bearer"}
        )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


async def _setup(clock: ManualClock, key: rsa.RSAPrivateKey, tmp: Path) -> Any:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    endpoint = TokenEndpoint(clock, public.decode())
    app = web.Application()
    app.router.add_post("/token", endpoint.token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    endpoint.url = f"http://127.0.0.1:{port}/token"
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_file = tmp / "sa.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": PROJECT,
                "private_key_id": "k1",
                "private_key": private.decode(),
                "client_email": f"sa@{PROJECT}.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": endpoint.url,
            }
        )
    )
    return endpoint, runner, key_file


@pytest.fixture
def clock() -> SkippingClock:
    return SkippingClock()


async def _vertex(
    clock: ManualClock, key: rsa.RSAPrivateKey, tmp: Path, **fake: Any
) -> AsyncIterator[tuple[TokenEndpoint, Any, Veo3Client, BearerAuth]]:
    endpoint, runner, key_file = await _setup(clock, key, tmp)
    try:
        loop = asyncio.get_running_loop()
        auth = await loop.run_in_executor(None, lambda: load_adc(str(key_file), clock=clock))
        async with (
            FakeVeoServer(clock=clock, token_issuer=endpoint, **fake) as veo,
            aiohttp.ClientSession() as session,
        ):
            client = Veo3Client(
                session, base_url=veo.base_url, dialect="vertex", project=PROJECT, auth=auth
            )
            yield endpoint, veo, client, auth
    finally:
        await runner.cleanup()


def test_jobs_complete_over_more_than_an_hour_with_tokens_refreshed(
    clock: SkippingClock, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    async def body() -> None:
        async for endpoint, veo, client, auth in _vertex(
            clock, rsa_key, tmp_path, latency_s=600, video_size=50_000
        ):
            store = LocalStore(tmp_path / "data", "http://127.0.0.1:1")
            await store.start()
            actor = GenerationActor(client, store, polling_interval_s=20, clock=clock)
            t0 = clock.now()
            done = 0
            while clock.now() - t0 < 3900:  # 65 simulated minutes, 10 per job
                job = a_job(
                    id=f"j{done}",
                    generation_id=f"j{done}",
                    prompt="a fox at dawn",
                    model="veo-3.1-generate-001",
                    created_at=clock.now(),
                    updated_at=clock.now(),
                )

                async def report(progress: int | None = None, checkpoint: Any = None) -> None:
                    return None

                result = await actor(job, report)
                assert result.video_key and (tmp_path / "data" / result.video_key).stat().st_size
                assert result.video_url
                done += 1
            await store.close()
            assert done >= 6 and clock.now() - t0 > 3600
            # Every token came from the endpoint, each refreshed before its 60 s were up:
            # no call was refused (a refused one would have been a 401 and a second try).
            assert auth.refreshes == len(endpoint.issued) >= 3600 // TOKEN_LIFETIME_S
            refused = [r for r in veo.requests if r.headers.get("authorization") is None]
            assert refused == []
            assert veo.starts == done

    run(body())


def test_one_refresh_serves_many_concurrent_callers(
    clock: SkippingClock, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    async def body() -> None:
        async for endpoint, _veo, _client, auth in _vertex(clock, rsa_key, tmp_path):
            assert isinstance(auth, BearerAuth)
            tokens = await asyncio.gather(*(auth.token() for _ in range(50)))
            assert len(set(tokens)) == 1 and len(endpoint.issued) == 1
            clock.advance(TOKEN_LIFETIME_S)  # past its use-by time
            tokens = await asyncio.gather(*(auth.token() for _ in range(50)))
            assert len(set(tokens)) == 1 and len(endpoint.issued) == 2

    run(body())


def test_a_401_refreshes_once_then_fails(
    clock: SkippingClock, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    async def body() -> None:
        async for endpoint, veo, client, _auth in _vertex(clock, rsa_key, tmp_path):
            from genqueue.providers.veo import VideoParams

            await client.start("first", VideoParams())
            endpoint.revoked.update(endpoint.issued)  # e.g. the key's tokens were revoked
            name = await client.start("second", VideoParams())  # 401, refresh, succeeds
            assert name and len(endpoint.issued) == 2 and veo.starts == 2
            endpoint.refuse_all = True  # every token refused from now on
            with pytest.raises(ProviderError) as info:
                await client.start("third", VideoParams())
            assert (info.value.code, info.value.status) == ("auth", 401)
            assert len(endpoint.issued) == 3  # one refresh, not a loop
            assert veo.starts == 2

    run(body())


def test_google_auth_loads_only_for_adc() -> None:
    """An API key or a fixed token needs none of google-auth (nor requests, cryptography):
    importing genqueue and building a Veo client with a key leaves them unloaded."""
    code = (
        "import sys, genqueue\n"
        "from genqueue.providers.veo.google_auth import ApiKeyAuth, FixedTokenAuth\n"
        "ApiKeyAuth('k'), FixedTokenAuth('t')\n"
        "heavy = ('google.auth', 'requests', 'cryptography')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
