"""The fake Veo judged by Google's own SDK: if google-genai cannot complete a generation
against it, the fake is wrong. The project's own client runs the same table of cases.

- Vertex AI, with the current google-genai (3.x, the `dev` extra), as a real deployment
  runs it: `genai.Client(vertexai=True, project=..., location=...)`, Application Default
  Credentials from a throwaway service-account key (GOOGLE_APPLICATION_CREDENTIALS) whose
  `token_uri` is the fake's own OAuth endpoint, the SDK's default API version (v1beta1) and
  v1; plus express mode (`vertexai=True, api_key=...`).
- The Gemini API, with google-genai 2.34.0: 3.0.0 made `generate_videos` raise "This method
  is only supported in Gemini Enterprise Agent Platform mode, not in Gemini Developer API
  mode" (models.py `_generate_videos`), and two versions cannot share one environment, so it
  runs in a virtualenv this module builds once under .cache/ (keyed by its pinned
  requirements, tests/sdk/genai-gemini-requirements.txt; pip's cache keeps rebuilds fast).
  The fake speaks HTTPS there: 2.34.0's `files.download` takes the file name from a video
  URI only when it starts with `https://` (`_transformers.t_file_name`).

Each SDK run is tests/sdk/drive_veo.py in a subprocess: `generate_videos`, then
`operations.get` until done, then the video's bytes (`files.download` on Gemini; inline
bytes or the `gs://` object on Vertex), whose SHA-256 must be the fake's video's.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
import pytest
from conftest import run
from veo_cases import CASES, Case, check, outcome_of_ours, outcome_of_sdk

from genqueue.errors import ProviderError
from genqueue.providers.fake_veo import (
    GOOGLE_MODELS,
    FakeVeo,
    FakeVeoServer,
    FaultControls,
    TokenIssuer,
)
from genqueue.providers.veo3 import Veo3Client, VideoParams

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "sdk" / "drive_veo.py"
GEMINI_REQUIREMENTS = ROOT / "tests" / "sdk" / "genai-gemini-requirements.txt"
GEMINI_KEY = "gemini-key-4f1c"
EXPRESS_KEY = "vertex-express-key-9a2e"
PROJECT, LOCATION = "fake-project", "us-central1"
VIDEO_SIZE = 96 * 1024
T = TypeVar("T")


class StepClock:
    """A clock that moves `step_s` each time it is read, so an operation with a latency is
    still running at the first poll and done a few polls later, without sleeping."""

    def __init__(self, step_s: float = 1.0):
        self.t, self.step_s = 1_800_000_000.0, step_s

    def now(self) -> float:
        self.t += self.step_s
        return self.t


# -- the environments the SDK runs in ------------------------------------------------------------


def gemini_sdk_python() -> Path:
    """The python of a virtualenv holding google-genai 2.34.0, built once and cached."""
    digest = hashlib.sha256(GEMINI_REQUIREMENTS.read_bytes() + sys.version.encode()).hexdigest()
    venv = ROOT / ".cache" / f"genai-gemini-{digest[:12]}"
    python, complete = venv / "bin" / "python", venv / ".complete"
    if complete.exists():
        return python
    venv.parent.mkdir(exist_ok=True)
    with (venv.parent / "genai-gemini.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others then reuse it
        if not complete.exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
            install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            install += ["--no-deps", "--only-binary=:all:", "-r", str(GEMINI_REQUIREMENTS)]
            subprocess.run(install, check=True, timeout=400)
            complete.touch()
    return python


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A self-signed certificate for 127.0.0.1: the server's context and the CA file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-veo.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


# -- one fake per case ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fake_for(
    case: Case, tmp: Path, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[FakeVeo, TokenIssuer, Path]]:
    """The fake with Google's model table, a token issuer, a key file naming its endpoint."""
    issuer = TokenIssuer(lifetime_s=3600)
    server = FakeVeoServer(
        ssl_context=ssl_context,
        api_key=GEMINI_KEY,
        vertex_api_key=EXPRESS_KEY,
        token_issuer=issuer,
        models=GOOGLE_MODELS,
        clock=StepClock(),
        latency_s=2.0,
        video_size=VIDEO_SIZE,
    )
    async with server as fake:
        key = issuer.new_key(tmp, f"{fake.base_url}/token", PROJECT)
        # What `POST /_fake/faults` with `case.faults` arms (its decoder, in-process).
        fake.apply(msgspec.json.decode(json.dumps(case.faults), type=FaultControls))
        yield fake, issuer, key.path


async def drive_with_sdk(python: Path, case: Case, fake: FakeVeo, extra: dict[str, Any]) -> Any:
    extra = dict(extra)
    key_file = extra.pop("key_file", None)
    spec = {
        "mode": case.door,
        "base_url": fake.base_url,
        "model": case.model,
        "prompt": case.prompt,
        "config": case.config,
        "api_version": case.api_version,
        "project": PROJECT,
        "location": LOCATION,
        "api_key": EXPRESS_KEY if case.door == "express" else GEMINI_KEY,
    } | extra
    kept = ("PATH", "HOME", "LANG", "TMPDIR", "PIP_CACHE_DIR", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in kept}
    if case.door == "vertex":
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(key_file)
    proc = await asyncio.create_subprocess_exec(
        str(python),
        str(DRIVER),
        json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, f"the SDK driver failed:\n{err.decode()[-4000:]}"
    return json.loads(out)


def by_door(*doors: str) -> list[Any]:
    return [pytest.param(c, id=c.name) for c in CASES if c.door in doors]


# -- Google's SDK, Vertex AI (current release) ---------------------------------------------------


@pytest.mark.parametrize("case", by_door("vertex", "express"))
def test_google_sdk_on_vertex_completes_against_the_fake(case: Case, tmp_path: Path) -> None:
    async def body() -> None:
        async with fake_for(case, tmp_path) as (fake, issuer, key_file):
            extra = {"key_file": key_file}
            result = await drive_with_sdk(Path(sys.executable), case, fake, extra)
            check(case, outcome_of_sdk(result), VIDEO_SIZE, sdk=True)
            calls = [r for r in fake.requests if not r.path_qs.startswith(("/token", "/_fake"))]
            version = case.api_version or "v1beta1"  # the SDK's default on Vertex
            api_calls = [r for r in calls if not r.path_qs.startswith("/storage/")]
            assert all(r.path_qs.startswith(f"/{version}/") for r in api_calls), calls
            if case.door == "express":
                assert all(r.headers["x-goog-api-key"] == EXPRESS_KEY for r in calls)
                assert all("/projects/" not in r.path_qs for r in calls)
                assert issuer.grants == 0
            else:
                # Every call carried a live token the issuer gave for the key's signed JWT.
                tokens = {r.headers["authorization"].removeprefix("Bearer ") for r in calls}
                assert issuer.grants == len(tokens) >= 1
                assert all(issuer.check(token) == "live" for token in tokens)
                prefix = f"/{version}/projects/{PROJECT}/locations/{LOCATION}/publishers/google"
                assert all(r.path_qs.startswith(prefix) for r in api_calls), calls
            if case.expect == "video":
                assert result["polls"] >= 1  # it saw the operation running, then done
            if "output_gcs_uri" in case.config:
                _check_gcs(case, result, fake)

    run(body())


def _check_gcs(case: Case, result: Any, fake: FakeVeo) -> None:
    """Videos written where `storageUri` said, fetched through the JSON API, name escaped."""
    prefix = case.config["output_gcs_uri"] + "/"
    assert all(v["uri"].startswith(prefix) for v in result["videos"]), result
    assert fake.last_start_body is not None
    assert fake.last_start_body["parameters"]["storageUri"] == case.config["output_gcs_uri"]
    fetched = [r.path_qs for r in fake.requests if r.path_qs.startswith("/storage/")]
    assert len(fetched) == case.samples
    assert all("runs%2Fa%20b%2Bc%2F" in p and p.endswith("?alt=media") for p in fetched)


# -- Google's SDK, Gemini API (2.34.0, the last release that drives Veo there) --------------------


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", by_door("gemini"))
def test_google_sdk_on_the_gemini_api_completes_against_the_fake(
    case: Case, tmp_path: Path, tls: tuple[ssl.SSLContext, Path]
) -> None:
    python = gemini_sdk_python()
    context, ca_file = tls

    async def body() -> None:
        async with fake_for(case, tmp_path, context) as (fake, _issuer, _key):
            result = await drive_with_sdk(python, case, fake, {"ca_file": str(ca_file)})
            check(case, outcome_of_sdk(result), VIDEO_SIZE, sdk=True)
            calls = [r for r in fake.requests if not r.path_qs.startswith("/_fake")]
            assert all(r.path_qs.startswith("/v1beta/") for r in calls), calls
            assert all(r.headers["x-goog-api-key"] == GEMINI_KEY for r in calls)
            if case.expect == "video":
                downloads = [r.path_qs for r in calls if r.path_qs.startswith("/v1beta/files/")]
                assert len(downloads) == case.samples
                assert all(p.endswith(":download?alt=media") for p in downloads)

    run(body())


def test_only_google_genai_2_34_still_drives_veo_on_the_gemini_api() -> None:
    """The pin above is the newest such release: the installed 3.x refuses the Gemini door."""
    from google import genai
    from google.genai import types

    client = genai.Client(api_key="k", http_options={"base_url": "http://127.0.0.1:9"})
    source = types.GenerateVideosSource(prompt="x")
    with pytest.raises(ValueError, match="only supported in Gemini Enterprise Agent Platform"):
        client.models.generate_videos(model="veo-3.1-generate-preview", source=source)
    assert "google-genai==2.34.0" in GEMINI_REQUIREMENTS.read_text().split()
    assert genai.__version__.split(".")[0] == "3"


# -- the project's own client, the same cases ----------------------------------------------------


async def drive_with_ours(case: Case, fake: FakeVeo, issuer: TokenIssuer) -> Any:
    params = VideoParams(
        duration=int(case.config.get("duration_seconds", 8)),
        aspect_ratio=str(case.config.get("aspect_ratio", "16:9")),
        resolution=str(case.config.get("resolution", "720p")),
        sample_count=case.samples,
        seed=case.config.get("seed"),
    )
    async with aiohttp.ClientSession() as session:
        if case.door == "gemini":
            client = Veo3Client(session, base_url=fake.base_url, api_key=GEMINI_KEY)
        elif case.door == "express":  # Vertex with an API key and no project
            client = Veo3Client(
                session, base_url=fake.base_url, dialect="vertex", api_key=EXPRESS_KEY
            )
        else:
            client = Veo3Client(
                session,
                base_url=fake.base_url,
                dialect="vertex",
                access_token=issuer.issue(),
                project=PROJECT,
                location=LOCATION,
            )
        try:
            op = await client.poll(await client.start(case.prompt, params, model=case.model))
            for _ in range(50):
                if op.done:
                    break
                op = await client.poll(op.name)
            videos = []
            for ref in op.videos:
                videos.append(b"".join([chunk async for chunk in client.download(ref)]))
        except ProviderError as exc:
            return outcome_of_ours(exc, [])
        return outcome_of_ours(None, videos)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES if c.ours])
def test_the_project_client_runs_the_same_cases(case: Case, tmp_path: Path) -> None:
    async def body() -> None:
        async with fake_for(case, tmp_path) as (fake, issuer, _key):
            seen = await drive_with_ours(case, fake, issuer)
            check(case, seen, VIDEO_SIZE, sdk=False)
            if case.expect in ("not_found", "prompt_blocked") or case.expect.startswith("quota"):
                assert seen.retryable is not None
            if case.expect == "quota_minute":
                assert seen.retryable is True

    run(body())
