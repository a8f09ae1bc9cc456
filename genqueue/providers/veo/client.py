"""Veo 3 client on aiohttp: start a generation, poll its operation, stream its videos.

Two doors of one long-running-operation API, "gemini" (the Gemini API, key in
`x-goog-api-key`) and "vertex" (Vertex AI, or its express mode with an API key). What
each call sends and where is endpoints.py; reading the answers, operations.py; the
credentials and the failures on the way, transport.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import aiohttp

from genqueue.errors import ConfigError, InvalidRequest
from genqueue.providers.veo.endpoints import Door, fetchable, model_segment
from genqueue.providers.veo.google_auth import ApiKeyAuth, Auth, FixedTokenAuth
from genqueue.providers.veo.inline import inline_chunks
from genqueue.providers.veo.operations import (
    check_operation_name,
    model_of,
    operation_of,
    started_name,
)
from genqueue.providers.veo.settings import (
    GEMINI_DEFAULT_MODEL,
    VERTEX_DEFAULT_MODEL,
    VeoSettings,
)
from genqueue.providers.veo.shapes import Operation, VideoParams, VideoRef
from genqueue.providers.veo.transport import MAX_REDIRECTS, VeoHttp
from genqueue.providers.veo.validation import validate_params

__all__ = ["GCS_BASE_URL", "MAX_REDIRECTS", "Veo3Client", "model_segment"]

GCS_BASE_URL = "https://storage.googleapis.com"


class Veo3Client:
    """Starts Veo generations, polls them and streams the videos, over one aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str | None = None,
        dialect: Literal["gemini", "vertex"] = "gemini",
        access_token: str | None = None,
        project: str | None = None,
        location: str = "us-central1",
        model: str | None = None,
        request_timeout_s: float = 60.0,
        auth: Auth | None = None,
        output_gcs_uri: str | None = None,
        gcs_base_url: str = GCS_BASE_URL,
        result_timeout_s: float = 300.0,
        quota_pause_s: float = 3600.0,
        host_for_location: Callable[[str], str] | None = None,
    ):
        """`host_for_location`: the API host of a Vertex location (given when the host follows
        VERTEX_LOCATION, i.e. no VEO3_BASE_URL): a poll then goes to the host of the location
        its operation names, which a restart with another VERTEX_LOCATION does not change."""
        if dialect not in ("gemini", "vertex"):
            raise ConfigError(f"VEO3_DIALECT must be gemini or vertex, not {dialect!r}")
        if dialect == "vertex" and not project and not (api_key or auth):
            raise ConfigError("VERTEX_PROJECT is required for the vertex dialect")
        base = base_url.rstrip("/")
        self._door = Door(base, dialect, project, location, output_gcs_uri, host_for_location)
        self._gcs = gcs_base_url.rstrip("/")
        self._http = VeoHttp(
            session,
            base_url=base,
            gcs_base_url=self._gcs,
            auth=auth or _auth_from(dialect, api_key, access_token),
            request_timeout_s=request_timeout_s,
            quota_pause_s=quota_pause_s,
        )
        # the door's default (genqueue.providers.veo.settings) unless given
        self.model = model or (
            VERTEX_DEFAULT_MODEL if dialect == "vertex" else GEMINI_DEFAULT_MODEL
        )
        self.request_timeout_s = request_timeout_s  # one call's (a start's) time limit
        self._call_timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        # A Vertex poll may carry the videos inline: base64 of 1080p MP4s (tens of MB).
        self._result_timeout = aiohttp.ClientTimeout(
            total=max(result_timeout_s, request_timeout_s), sock_read=request_timeout_s
        )

    @classmethod
    def for_settings(
        cls,
        session: aiohttp.ClientSession,
        veo: VeoSettings,
        *,
        auth: Auth | None,
        base_url: str | None = None,
        **options: Any,
    ) -> Veo3Client:
        """The client the resolved settings describe (`base_url` replaces theirs, e.g. the
        built-in fake's); `options` are the other keywords (timeouts, GCS, hosts)."""
        return cls(
            session,
            base_url=base_url or veo.base_url,
            api_key=veo.api_key,
            dialect=veo.dialect,
            access_token=veo.access_token,
            project=veo.project,
            location=veo.location,
            model=veo.model,
            auth=auth,
            **options,
        )

    def __repr__(self) -> str:  # never shows the key or the token
        door = self._door
        return f"Veo3Client(base_url={door.base!r}, dialect={door.dialect!r}, model={self.model!r})"

    @property
    def dialect(self) -> str:
        return self._door.dialect

    @property
    def auth(self) -> Auth | None:
        return self._http.auth

    async def start(self, prompt: str, params: VideoParams, *, model: str | None = None) -> str:
        """Start a generation (a paid call) and return the operation name.

        A failure after the request went out (a timeout, a reset) is `ambiguous_start`: Veo
        may have started, and charged for, the video whose name was lost. So is a 2xx answer
        whose body cannot be read (cut short by a proxy, a renamed field): Google accepted
        the start, so it is never sent again blindly (VEO3_AMBIGUOUS_START decides)."""
        model = model or self.model
        segment = model_segment(model)
        if not prompt.strip():
            raise InvalidRequest("prompt must not be blank", field="prompt")
        validate_params(params)
        body = self._door.start_body(prompt, params)
        url = self._door.model_url(segment, "predictLongRunning")
        with self._http.guard("start", paid=True):
            payload = await self._http.call("POST", url, body, "start", model, self._call_timeout)
            return started_name(payload)

    async def poll(self, name: str) -> Operation:
        """Read the operation once: running, finished with videos, or a ProviderError."""
        check_operation_name(name)
        model = model_of(name) or self.model
        # Vertex's answer may carry the videos inline: it gets the longer timeout.
        timeout = self._result_timeout if self.dialect == "vertex" else self._call_timeout
        with self._http.guard("poll"):
            method, url, body = self._door.poll_request(name)
            payload = await self._http.call(method, url, body, "poll", model, timeout)
            return operation_of(payload, name)

    async def check_model(self, model: str | None = None) -> None:
        """Ask the door whether it serves `model`: returns if so; ProviderError
        `model_not_found` / `no_access` if not, a retryable one if the door could not be
        asked (Gemini: `GET /v1beta/models/{m}`; Vertex: `GET /v1beta1/publishers/google/
        models/{m}`)."""
        model = model or self.model
        url = self._door.check_url(model_segment(model))
        with self._http.guard("model"):
            await self._http.call("GET", url, None, "model", model, self._call_timeout)

    async def download(self, video: VideoRef, chunk_size: int = 1 << 16) -> AsyncIterator[bytes]:
        """Stream the video's bytes in chunks of at most `chunk_size`.

        Credentials go only to the API's origin (and Cloud Storage for `gs://`), redirects
        included. A caller that may stop early should wrap the generator in
        `contextlib.aclosing` to free the connection.
        """
        if video.data_b64 is not None:
            for chunk in inline_chunks(video.data_b64, chunk_size):
                yield chunk
            return
        url = fetchable(video.uri, self._gcs)
        with self._http.guard("download"):
            async with self._http.follow(url, self.model) as resp:
                async for chunk in resp.content.iter_chunked(chunk_size):
                    yield chunk


def _auth_from(dialect: str, api_key: str | None, access_token: str | None) -> Auth | None:
    if dialect == "vertex" and access_token:
        return FixedTokenAuth(access_token)
    if api_key:
        return ApiKeyAuth(api_key)
    return None
