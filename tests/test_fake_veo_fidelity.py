"""The fake Veo answers as Google does where the SDK tests do not reach: the model checks,
credentials (the local OAuth endpoint, expired tokens, express keys), the two kinds of 429
over time, the audio filter's random blocks, Cloud Storage's JSON API and the parameters
each door refuses. Real HTTP on loopback; time from a ManualClock."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from conftest import run
from helpers_procs import FakeVeoProc

from genqueue.clock import ManualClock
from genqueue.providers.fake_veo import (
    AUDIO_REASON,
    GOOGLE_MODELS,
    FakeVeo,
    FakeVeoServer,
    TokenIssuer,
    build_mp4,
)

pytestmark = pytest.mark.timeout(30)
T = TypeVar("T")
KEY, EXPRESS = "gemini-k", "express-k"
VERTEX = "/v1/projects/p1/locations/us-central1/publishers/google/models"
BODY = {"instances": [{"prompt": "a heron"}], "parameters": {}}
JWT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def server(clock: ManualClock, issuer: TokenIssuer | None = None, **options: Any) -> FakeVeoServer:
    return FakeVeoServer(
        api_key=KEY,
        vertex_api_key=EXPRESS,
        token_issuer=issuer or TokenIssuer(clock=clock),
        models=GOOGLE_MODELS,
        clock=clock,
        **options,
    )


async def call(
    fake: FakeVeo, method: str, path: str, body: Any = None, **headers: str
) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, fake.base_url + path, json=body, headers=headers) as resp,
    ):
        data = await resp.read()
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = data
        return resp.status, parsed, resp.headers


def detail_types(body: Any) -> list[str]:
    return [d["@type"].rsplit(".", 1)[-1] for d in body["error"].get("details", [])]


def test_each_door_checks_its_own_models() -> None:
    async def body() -> None:
        clock = ManualClock()
        issuer = TokenIssuer(clock=clock)
        async with server(clock, issuer) as fake:
            bearer = {"Authorization": f"Bearer {issuer.issue()}"}
            status, model, _ = await call(
                fake, "GET", "/v1beta/models/veo-3.1-generate-preview", **{"x-goog-api-key": KEY}
            )
            assert status == 200 and model["name"] == "models/veo-3.1-generate-preview"
            assert model["supportedGenerationMethods"] == ["predictLongRunning"]
            status, err, _ = await call(
                fake, "GET", "/v1beta/models/veo-3.1-generate-001", **{"x-goog-api-key": KEY}
            )
            assert (status, err["error"]["status"]) == (404, "NOT_FOUND")
            for version in ("v1", "v1beta1"):
                path = f"/{version}/publishers/google/models/veo-3.1-lite-generate-001"
                status, model, _ = await call(fake, "GET", path, **bearer)
                assert status == 200 and model["name"].endswith("/veo-3.1-lite-generate-001")
                path = f"/{version}/publishers/google/models/veo-3.1-generate-preview"
                assert (await call(fake, "GET", path, **bearer))[0] == 404
            # A start on an unserved model: Google's words, per door.
            path = "/v1beta/models/veo-3.1-generate-001:predictLongRunning"
            status, err, _ = await call(fake, "POST", path, BODY, **{"x-goog-api-key": KEY})
            assert (
                status == 404 and "is not found for API version v1beta" in err["error"]["message"]
            )
            path = f"{VERTEX}/veo-3.1-generate-preview:predictLongRunning"
            status, err, _ = await call(fake, "POST", path, BODY, **bearer)
            assert status == 404 and err["error"]["message"].startswith(
                "Publisher Model `projects/"
            )
            assert fake.starts == 0

    run(body())


def test_a_service_account_key_gets_a_token_that_expires(tmp_path: Path) -> None:
    """google-auth's own refresh against the fake's `POST /token`, then the token's hour."""
    import google.auth.transport.requests
    from google.oauth2 import service_account

    async def body() -> None:
        clock = ManualClock()
        issuer = TokenIssuer(clock=clock, lifetime_s=60)
        async with server(clock, issuer) as fake:
            key = issuer.new_key(tmp_path, f"{fake.base_url}/token")
            info = json.loads(key.path.read_text())
            assert (
                info["token_uri"] == f"{fake.base_url}/token" and info["type"] == "service_account"
            )
            creds = service_account.Credentials.from_service_account_file(
                str(key.path), scopes=["https://www.googleapis.com/auth/cloud-platform"]
            )
            request = google.auth.transport.requests.Request()
            await asyncio.to_thread(creds.refresh, request)  # blocking: off the loop
            assert issuer.grants == 1 and issuer.check(creds.token) == "live"
            bearer = {"Authorization": f"Bearer {creds.token}"}
            path = f"{VERTEX}/veo-3.1-generate-001:predictLongRunning"
            assert (await call(fake, "POST", path, BODY, **bearer))[0] == 200
            clock.advance(61)
            status, err, _ = await call(fake, "POST", path, BODY, **bearer)
            assert (status, err["error"]["status"]) == (401, "UNAUTHENTICATED")
            assert err["error"]["details"][0]["reason"] == "ACCESS_TOKEN_EXPIRED"
            for headers in ({"Authorization": "Bearer ya29.made-up"}, {}):
                assert (await call(fake, "POST", path, BODY, **headers))[0] == 401
            assert fake.starts == 1

    run(body())


def test_the_fake_trusts_a_token_endpoint_served_elsewhere(tmp_path: Path) -> None:
    """The issuer on its own port; the fake, pointed at it, takes only the tokens it issued."""
    import google.auth.transport.requests
    from google.oauth2 import service_account

    async def body() -> None:
        issuer = TokenIssuer()
        runner = web.AppRunner(issuer.app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        token_uri = f"http://127.0.0.1:{runner.addresses[0][1]}/token"
        try:
            async with server(ManualClock(), issuer) as fake:
                key = issuer.new_key(tmp_path, token_uri)
                creds = service_account.Credentials.from_service_account_file(
                    str(key.path), scopes=["https://www.googleapis.com/auth/cloud-platform"]
                )
                await asyncio.to_thread(creds.refresh, google.auth.transport.requests.Request())
                path = f"{VERTEX}/veo-3.1-generate-001:predictLongRunning"
                ok = await call(fake, "POST", path, BODY, Authorization=f"Bearer {creds.token}")
                assert ok[0] == 200 and issuer.grants == 1
                other = TokenIssuer().issue()  # live, but from an issuer the fake does not trust
                assert (await call(fake, "POST", path, BODY, Authorization=f"Bearer {other}"))[
                    0
                ] == 401
        finally:
            await runner.cleanup()

    run(body())


def test_the_token_endpoint_refuses_what_google_refuses(tmp_path: Path) -> None:
    async def body() -> None:
        issuer = TokenIssuer()
        async with server(ManualClock(), issuer) as fake:
            issuer.new_key(tmp_path, f"{fake.base_url}/token")
            header = base64.urlsafe_b64encode(b'{"alg":"RS256"}').rstrip(b"=").decode()
            claims = {"iss": "nobody@x.iam.gserviceaccount.com", "aud": "x", "exp": 2**40}
            payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
            forms = {
                "grant_type=password&username=u": "unsupported_grant_type",
                f"grant_type={JWT}&assertion={header}.{payload}.c2ln": "invalid_grant",
                f"grant_type={JWT}&assertion=not-a-jwt": "invalid_grant",
            }
            async with aiohttp.ClientSession() as http:
                for form, error in forms.items():
                    headers = {"Content-Type": "application/x-www-form-urlencoded"}
                    async with http.post(f"{fake.base_url}/token", data=form, headers=headers) as r:
                        assert (r.status, (await r.json())["error"]) == (400, error)
            assert (issuer.grants, issuer.refused) == (0, 3)

    run(body())


def test_express_mode_takes_a_vertex_api_key_without_a_project() -> None:
    async def body() -> None:
        async with server(ManualClock()) as fake:
            path = "/v1beta1/publishers/google/models/veo-3.1-fast-generate-001:predictLongRunning"
            status, op, _ = await call(fake, "POST", path, BODY, **{"x-goog-api-key": EXPRESS})
            assert status == 200 and op["name"].startswith("publishers/google/models/")
            fetch = path.replace("predictLongRunning", "fetchPredictOperation")
            status, done, _ = await call(
                fake, "POST", fetch, {"operationName": op["name"]}, **{"x-goog-api-key": EXPRESS}
            )
            assert status == 200 and done["done"] and done["response"]["videos"]
            status, err, _ = await call(fake, "POST", path, BODY, **{"x-goog-api-key": "wrong"})
            assert (status, err["error"]["details"][0]["reason"]) == (400, "API_KEY_INVALID")
            status, err, _ = await call(fake, "POST", path, BODY)
            assert (status, err["error"]["status"]) == (401, "UNAUTHENTICATED")

    run(body())


def test_per_minute_and_per_day_quotas_answer_differently() -> None:
    async def body() -> None:
        clock = ManualClock(start=86_400 * 20_000 + 3_600)  # 01:00 on some day
        async with server(clock, rate_limit_per_minute=2, requests_per_day=3) as fake:
            path = "/v1beta/models/veo-3.1-generate-preview:predictLongRunning"
            key = {"x-goog-api-key": KEY}
            for _ in range(2):
                assert (await call(fake, "POST", path, BODY, **key))[0] == 200
            status, err, headers = await call(fake, "POST", path, BODY, **key)
            assert status == 429 and detail_types(err) == ["QuotaFailure", "RetryInfo"]
            assert headers["Retry-After"] == "60" and "PerMinute" in json.dumps(err)
            clock.advance(60)
            assert (await call(fake, "POST", path, BODY, **key))[0] == 200  # the third today
            clock.advance(60)
            status, err, headers = await call(fake, "POST", path, BODY, **key)
            assert status == 429 and detail_types(err) == ["QuotaFailure"]  # no RetryInfo
            assert "Retry-After" not in headers
            violation = err["error"]["details"][0]["violations"][0]
            assert violation["quotaId"] == "GenerateRequestsPerDayPerProjectPerModel"
            clock.advance(86_400)  # the next day
            assert (await call(fake, "POST", path, BODY, **key))[0] == 200
            assert (fake.starts, fake.rate_limited) == (4, 2)

    run(body())


def test_the_audio_filter_blocks_at_random_and_a_retry_may_pass() -> None:
    async def body() -> None:
        async with server(ManualClock()) as fake:
            status, reply, _ = await call(fake, "POST", "/_fake/faults", {"audio_blocks": 1})
            assert status == 200 and reply["faults"]["audio_blocks"] == 1
            path = "/v1beta/models/veo-3.1-generate-preview:predictLongRunning"
            key = {"x-goog-api-key": KEY}
            results = []
            for _ in range(2):
                _, op, _ = await call(fake, "POST", path, BODY, **key)
                _, done, _ = await call(fake, "GET", f"/v1beta/{op['name']}", **key)
                results.append(done["response"]["generateVideoResponse"])
            assert results[0] == {
                "raiMediaFilteredCount": 1,
                "raiMediaFilteredReasons": [AUDIO_REASON],
            }
            assert "You have not been charged" in AUDIO_REASON
            assert len(results[1]["generatedSamples"]) == 1  # the same prompt, tried again

    run(body())


def test_storage_uri_objects_are_served_by_the_json_api_with_credentials() -> None:
    async def body() -> None:
        clock = ManualClock()
        issuer = TokenIssuer(clock=clock)
        async with server(clock, issuer, video_size=50_000) as fake:
            bearer = {"Authorization": f"Bearer {issuer.issue()}"}
            start = {
                "instances": [{"prompt": "a heron"}],
                "parameters": {"storageUri": "gs://bkt/out dir/", "sampleCount": 1},
            }
            path = f"{VERTEX}/veo-3.1-generate-001:predictLongRunning"
            _, op, _ = await call(fake, "POST", path, start, **bearer)
            fetch = path.replace("predictLongRunning", "fetchPredictOperation")
            _, done, _ = await call(fake, "POST", fetch, {"operationName": op["name"]}, **bearer)
            (video,) = done["response"]["videos"]
            assert (
                video["gcsUri"].startswith("gs://bkt/out dir/")
                and "bytesBase64Encoded" not in video
            )
            name = video["gcsUri"].removeprefix("gs://bkt/")
            obj = f"/storage/v1/b/bkt/o/{urllib.parse.quote(name, safe='')}"  # one segment
            status, meta, _ = await call(fake, "GET", obj, **bearer)
            assert status == 200 and (meta["name"], meta["size"]) == (name, "50000")
            status, data, _ = await call(fake, "GET", obj + "?alt=media", **bearer)
            assert status == 200 and data == build_mp4(50_000)
            assert (await call(fake, "GET", obj + "?alt=media"))[0] == 401
            assert (await call(fake, "GET", "/storage/v1/b/other/o/x?alt=media", **bearer))[
                0
            ] == 404

    run(body())


def test_each_door_refuses_the_parameters_google_refuses() -> None:
    async def body() -> None:
        clock = ManualClock()
        issuer = TokenIssuer(clock=clock)
        async with server(clock, issuer) as fake:
            gemini = "/v1beta/models/veo-3.1-generate-preview:predictLongRunning"
            for name, value in (("seed", 1), ("generateAudio", True), ("storageUri", "gs://b")):
                start = {"instances": [{"prompt": "x"}], "parameters": {name: value}}
                status, err, _ = await call(fake, "POST", gemini, start, **{"x-goog-api-key": KEY})
                assert status == 400 and f'Unknown name "{name}"' in err["error"]["message"]
            vertex = f"{VERTEX}/veo-3.1-generate-001:predictLongRunning"
            bearer = {"Authorization": f"Bearer {issuer.issue()}"}
            for params in ({"sampleCount": 5}, {"storageUri": "s3://b/x"}):
                start = {"instances": [{"prompt": "x"}], "parameters": params}
                assert (await call(fake, "POST", vertex, start, **bearer))[0] == 400
            start = {
                "instances": [{"prompt": "x"}],
                "parameters": {"seed": 3, "generateAudio": True},
            }
            assert (await call(fake, "POST", vertex, start, **bearer))[0] == 200

    run(body())


def test_the_fake_as_a_process_serves_googles_models_and_a_key_file(tmp_path: Path) -> None:
    """`main.py fake-veo --google-models --service-account-key PATH`: what a test of `serve`
    in another process points GOOGLE_APPLICATION_CREDENTIALS at."""
    import google.auth
    import google.auth.transport.requests

    key_file = tmp_path / "sa.json"
    extra = ("--google-models", "--service-account-key", str(key_file), "--token-lifetime-s", "5")
    fake = FakeVeoProc(tmp_path, extra_args=extra).start()
    try:
        info = json.loads(key_file.read_text())
        assert info["token_uri"] == f"{fake.url}/token"
        scopes = ["https://www.googleapis.com/auth/cloud-platform"]
        with pytest.MonkeyPatch.context() as env:
            env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
            creds, project = google.auth.default(scopes=scopes)
        creds.refresh(google.auth.transport.requests.Request())
        assert project == "fake-project" and creds.token.startswith("ya29.")
        path = f"{VERTEX}/veo-3.1-generate-001:predictLongRunning"
        bearer = {"Authorization": f"Bearer {creds.token}"}
        assert urlopen_json(f"{fake.url}{path}", BODY, bearer)[0] == 200
        gemini = f"{fake.url}/v1beta/models/veo-3.1-generate-001:predictLongRunning"
        assert urlopen_json(gemini, BODY, {})[0] == 404  # Vertex-only id, strict table
    finally:
        fake.stop()


def urlopen_json(url: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), headers | {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
