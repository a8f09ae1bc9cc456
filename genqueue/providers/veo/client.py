"""Veo 3 client on aiohttp: start a generation, poll its operation, stream its videos.

Two doors of one long-running-operation API:
- "gemini": the Gemini API, `{base}/v1beta/models/{m}:predictLongRunning`, polled with
  `GET {base}/v1beta/{operation}`, key in `x-goog-api-key`;
- "vertex": Vertex AI, `{base}/v1/projects/{p}/locations/{l}/publishers/google/models/{m}
  :predictLongRunning` (express mode: `{base}/v1/publishers/google/models/{m}:…` with an API
  key), polled with `POST {base}/v1/{model resource}:fetchPredictOperation` and
  `{"operationName": name}` as google-genai's `operations.py` does.

The model is one escaped path segment (never a path: `../../v1beta/files` stays inside its
segment). Credentials go only to the API's origin (and, for `gs://` results, to Cloud
Storage's JSON API), and never appear in a message. A 401 with refreshable credentials
(ADC) refreshes them and tries the call once more.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import msgspec
from yarl import URL

from genqueue.errors import ConfigError, InvalidRequest, ProviderError
from genqueue.providers.veo import failures
from genqueue.providers.veo.google_auth import ApiKeyAuth, Auth, FixedTokenAuth
from genqueue.providers.veo.inline import inline_chunks
from genqueue.providers.veo.settings import GEMINI_DEFAULT_MODEL, VERTEX_DEFAULT_MODEL
from genqueue.providers.veo.shapes import (
    OPERATION,
    STARTED,
    Operation,
    OpResponse,
    RawOperation,
    VideoParams,
    VideoRef,
)
from genqueue.providers.veo.validation import validate_params

__all__ = ["GCS_BASE_URL", "MAX_REDIRECTS", "Veo3Client", "model_segment"]

MAX_REDIRECTS = 5
GCS_BASE_URL = "https://storage.googleapis.com"
_REDIRECTS = (301, 302, 303, 307, 308)
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
_OPERATION = re.compile(
    r"^(?:projects/[^/?#]+/locations/[^/?#]+/)?(?:publishers/google/)?models/[^/?#]+"
    r"/operations/[^/?#]+$"
)
_LOCATION = re.compile(r"^projects/[^/?#]+/locations/([a-z0-9][a-z0-9-]{0,62})/")
_ENCODER = msgspec.json.Encoder()


def model_segment(model: str) -> str:
    """The model as one URL path segment; InvalidRequest for what is not a model id."""
    if not _MODEL_ID.fullmatch(model) or model.strip(".") == "":
        raise InvalidRequest(f"{model[:80]!r} is not a Veo model id", field="model")
    return quote(model, safe="")


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
        self._session = session
        self._base = base_url.rstrip("/")
        self._origin = _origin(URL(self._base))
        self._gcs = gcs_base_url.rstrip("/")
        self._dialect = dialect
        self._auth: Auth | None = auth or _auth_from(dialect, api_key, access_token)
        self._project = project
        self._location = location
        self._output_gcs_uri = output_gcs_uri
        self._host_for_location = host_for_location
        # the door's default (genqueue.providers.veo.settings) unless given
        self.model = model or (
            VERTEX_DEFAULT_MODEL if dialect == "vertex" else GEMINI_DEFAULT_MODEL
        )
        self._timeout_s = request_timeout_s
        self.request_timeout_s = request_timeout_s  # one call's (a start's) time limit
        self._quota_pause_s = quota_pause_s
        self._call_timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        # A Vertex poll may carry the videos inline: base64 of 1080p MP4s (tens of MB).
        self._result_timeout = aiohttp.ClientTimeout(
            total=max(result_timeout_s, request_timeout_s), sock_read=request_timeout_s
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=request_timeout_s, sock_read=request_timeout_s
        )

    def __repr__(self) -> str:  # never shows the key or the token
        return (
            f"Veo3Client(base_url={self._base!r}, dialect={self._dialect!r}, model={self.model!r})"
        )

    @property
    def dialect(self) -> str:
        return self._dialect

    @property
    def auth(self) -> Auth | None:
        return self._auth

    # -- public calls ---------------------------------------------------------------------

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
        body = {
            "instances": [self._instance(prompt, params)],
            "parameters": self._parameters(params),
        }
        url = self._model_url(segment, "predictLongRunning")
        with self._guard("start", paid=True):
            payload = await self._call("POST", url, body, "start", model, self._call_timeout)
            try:
                return _decode(STARTED, payload, "start").name
            except ProviderError as exc:
                raise ProviderError(
                    f"Veo accepted the start (HTTP 2xx) but its answer could not be read "
                    f"({exc.message}); Veo may have started (and charged for) it",
                    retryable=False,
                    code="ambiguous_start",
                ) from None

    async def poll(self, name: str) -> Operation:
        """Read the operation once: running, finished with videos, or a ProviderError."""
        if not _OPERATION.fullmatch(name):
            raise ProviderError(f"not a Veo operation name: {name[:200]!r}", retryable=False)
        model = _model_of(name) or self.model
        with self._guard("poll"):
            if self._dialect == "gemini":
                url = f"{self._base}/v1beta/{name}"
                payload = await self._call("GET", url, None, "poll", model, self._call_timeout)
            else:
                base = self._poll_base(name)
                url = f"{base}/v1/{name.partition('/operations/')[0]}:fetchPredictOperation"
                body = {"operationName": name}
                payload = await self._call("POST", url, body, "poll", model, self._result_timeout)
            raw = _decode(OPERATION, payload, "poll")
            del payload  # the JSON text goes before the videos are read
            return _to_operation(raw, name)

    async def check_model(self, model: str | None = None) -> None:
        """Ask the door whether it serves `model`: returns if so; ProviderError
        `model_not_found` / `no_access` if not, a retryable one if the door could not be
        asked. Gemini: `GET /v1beta/models/{m}`; Vertex: `GET /v1beta1/publishers/google/
        models/{m}`, the publisher-model read google-genai's `models.get` makes on Vertex
        (its `_api_client` skips the `projects/…` prefix for `publishers/` GETs)."""
        model = model or self.model
        segment = model_segment(model)
        if self._dialect == "gemini":
            url = f"{self._base}/v1beta/models/{segment}"
        else:
            url = f"{self._base}/v1beta1/publishers/google/models/{segment}"
        with self._guard("model"):
            await self._call("GET", url, None, "model", model, self._call_timeout)

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
        url = self._fetchable(video.uri)
        with self._guard("download"):
            async with self._follow(url) as resp:
                async for chunk in resp.content.iter_chunked(chunk_size):
                    yield chunk

    # -- requests -------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None,
        call: str,
        model: str,
        timeout: aiohttp.ClientTimeout,
    ) -> bytes:
        data = None if body is None else _ENCODER.encode(body)
        for attempt in (1, 2):
            auth = await self._auth_headers()
            headers = dict(auth)
            if data is not None:
                headers["Content-Type"] = "application/json"
            async with self._session.request(
                method,
                URL(url, encoded=True),
                data=data,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                payload = await resp.read()
                if resp.status == 401 and attempt == 1 and self._refreshable:
                    assert self._auth is not None
                    self._auth.rejected(auth)
                    continue
                if resp.status >= 300:
                    raise self._error(resp.status, payload, resp.headers, call, model)
                return payload
        raise AssertionError("unreachable")

    def _error(
        self, status: int, body: bytes, headers: Any, call: str, model: str
    ) -> ProviderError:
        return failures.http_error(
            status,
            body,
            headers,
            call=call,
            model=model,
            credential=self._credential,
            quota_pause_s=self._quota_pause_s,
        )

    @contextlib.asynccontextmanager
    async def _follow(self, url: URL) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET `url`, following redirects by hand so credentials never leave our origins."""
        for _ in range(MAX_REDIRECTS + 1):
            resp = await self._session.get(
                url,
                headers=await self._headers_for(url),
                allow_redirects=False,
                timeout=self._stream_timeout,
            )
            if resp.status in _REDIRECTS:
                url = _next_hop(url, resp)
                continue
            try:
                if resp.status >= 300:
                    body = await resp.content.read(65536)
                    raise self._error(resp.status, body, resp.headers, "download", self.model)
                yield resp
            finally:
                resp.release()
            return
        raise ProviderError(
            f"the video download was redirected more than {MAX_REDIRECTS} times",
            retryable=False,
            code="too_many_redirects",
        )

    async def _headers_for(self, url: URL) -> dict[str, str]:
        if _origin(url) in (self._origin, _origin(URL(self._gcs))):
            return await self._auth_headers()
        return {}

    async def _auth_headers(self) -> dict[str, str]:
        return await self._auth.headers() if self._auth is not None else {}

    @property
    def _refreshable(self) -> bool:
        return self._auth is not None and self._auth.refreshable

    @property
    def _credential(self) -> str:
        return "API key" if isinstance(self._auth, ApiKeyAuth) else "access token"

    def _poll_base(self, name: str) -> str:
        """The host that knows the operation `name`: its own location's, when hosts follow
        the location; else the configured base URL."""
        found = _LOCATION.match(name)
        if self._host_for_location is None or found is None or found[1] == self._location:
            return self._base
        return self._host_for_location(found[1]).rstrip("/")

    def _model_url(self, segment: str, method: str) -> str:
        if self._dialect == "gemini":
            return f"{self._base}/v1beta/models/{segment}:{method}"
        if not self._project:  # express mode
            return f"{self._base}/v1/publishers/google/models/{segment}:{method}"
        project, location = quote(self._project, safe=""), quote(self._location, safe="")
        return (
            f"{self._base}/v1/projects/{project}/locations/{location}"
            f"/publishers/google/models/{segment}:{method}"
        )

    def _instance(self, prompt: str, params: VideoParams) -> dict[str, Any]:
        instance: dict[str, Any] = {"prompt": prompt}
        if params.image is not None:
            instance["image"] = _image(params.image)
        if params.last_frame is not None:
            instance["lastFrame"] = _image(params.last_frame)
        if params.reference_images:
            instance["referenceImages"] = [
                {"image": _image(im), "referenceType": "asset"} for im in params.reference_images
            ]
        return instance

    def _parameters(self, params: VideoParams) -> dict[str, Any]:
        """Only what this door takes: the capability table refused the rest at submit, and a
        parameter the door does not take is refused here too, never silently dropped."""
        out: dict[str, Any] = {
            "aspectRatio": params.aspect_ratio,
            "resolution": params.resolution,
            "durationSeconds": params.duration,
            "negativePrompt": params.negative_prompt,
            "personGeneration": params.person_generation,
            "sampleCount": params.sample_count,
        }
        if self._dialect == "vertex":
            # Vertex documents generateAudio as required for Veo 3 models.
            out["generateAudio"] = True if params.generate_audio is None else params.generate_audio
            out["seed"] = params.seed
            out["storageUri"] = self._output_gcs_uri
        else:
            for name, value in (("seed", params.seed), ("generateAudio", params.generate_audio)):
                if value is not None:  # google-genai: "… parameter is not supported in Gemini API."
                    raise InvalidRequest(
                        f"{name} is not supported on the Gemini API", field=f"parameters.{name}"
                    )
        return {key: value for key, value in out.items() if value is not None}

    def _fetchable(self, uri: str | None) -> URL:
        """The http(s) URL of a video URI; `gs://bucket/object` maps to the GCS JSON API
        (`/storage/v1/b/{bucket}/o/{object}?alt=media`, the object name escaped whole)."""
        if not uri:
            raise ProviderError("the video has neither a URI nor inline bytes", retryable=False)
        if uri.startswith("gs://"):
            bucket, _, obj = uri.removeprefix("gs://").partition("/")
            if not bucket or not obj:
                raise ProviderError(f"not a gs://bucket/object URI: {uri!r}", retryable=False)
            path = f"/storage/v1/b/{quote(bucket, safe='')}/o/{quote(obj, safe='')}"
            return URL(f"{self._gcs}{path}?alt=media", encoded=True)
        url = URL(uri)
        if url.scheme not in ("http", "https"):
            raise ProviderError(f"cannot download a {url.scheme!r} URI", retryable=False)
        return url

    # -- errors ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self, call: str, *, paid: bool = False) -> Iterator[None]:
        """Turn transport failures into ProviderErrors and strip secrets from every message.
        On a paid call, a failure after the request may have been sent is ambiguous."""
        try:
            yield
        except ProviderError as exc:
            clean = self._redact(exc)
            if clean is exc:
                raise
            raise clean from None
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Never connected: nothing was sent, so nothing was started.
            message = self._scrub(f"Veo {call}: cannot connect ({type(exc).__name__}: {exc})")
            raise ProviderError(message, retryable=True, code="connection") from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            if paid:
                raise ProviderError(
                    f"Veo start: the answer was lost after the request was sent "
                    f"({type(exc).__name__}); Veo may have started (and charged for) it",
                    retryable=False,
                    code="ambiguous_start",
                ) from None
            if isinstance(exc, TimeoutError):
                raise ProviderError(
                    f"Veo {call} timed out after {self._timeout_s:g} s",
                    retryable=True,
                    code="timeout",
                ) from None
            if isinstance(exc, aiohttp.ClientPayloadError):
                raise ProviderError(
                    f"Veo {call}: the connection was cut before the body ended",
                    retryable=True,
                    code="connection_cut",
                ) from None
            message = self._scrub(f"Veo {call}: connection failed ({type(exc).__name__}: {exc})")
            raise ProviderError(message, retryable=True, code="connection") from None

    def _scrub(self, text: str) -> str:
        for secret in self._auth.secrets() if self._auth is not None else []:
            if secret:
                text = text.replace(secret, "[redacted]")
        return text

    def _redact(self, exc: ProviderError) -> ProviderError:
        message = self._scrub(exc.message)
        if message == exc.message:
            return exc
        return ProviderError(
            message,
            retryable=exc.retryable,
            status=exc.status,
            retry_after_s=exc.retry_after_s,
            code=exc.code,
        )


# -- pure helpers -----------------------------------------------------------------------------


def _auth_from(dialect: str, api_key: str | None, access_token: str | None) -> Auth | None:
    if dialect == "vertex" and access_token:
        return FixedTokenAuth(access_token)
    if api_key:
        return ApiKeyAuth(api_key)
    return None


def _image(image: Any) -> dict[str, str]:
    return {"bytesBase64Encoded": image.data_b64, "mimeType": image.mime_type}


def _decode(decoder: msgspec.json.Decoder[Any], payload: bytes, call: str) -> Any:
    try:
        return decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProviderError(
            f"Veo {call} answered malformed JSON: {exc}", retryable=True, code="malformed_response"
        ) from None


def _to_operation(raw: RawOperation, name: str) -> Operation:
    name = raw.name or name
    if not raw.done:
        return Operation(name=name, done=False)
    if raw.error is not None:
        raise failures.operation_error(raw.error)
    response = raw.response or OpResponse()
    videos = response.video_refs()
    if not videos:
        reasons, count = response.filter_reasons()
        raise failures.unfinished_error(reasons, count)
    return Operation(name=name, done=True, videos=videos)


def _origin(url: URL) -> tuple[str, str | None, int | None]:
    """Scheme, host and port (the default one when implicit): where credentials may go."""
    return url.scheme, url.host, url.port


def _model_of(name: str) -> str | None:
    before, found, _ = name.partition("/operations/")
    return before.rsplit("models/", 1)[-1] if found and "models/" in before else None


def _next_hop(url: URL, resp: aiohttp.ClientResponse) -> URL:
    location = resp.headers.get("Location")
    resp.release()
    if not location:
        raise ProviderError(
            f"the video download answered HTTP {resp.status} without a Location",
            retryable=True,
            status=resp.status,
            code="bad_redirect",
        )
    target = url.join(URL(location))
    if target.scheme not in ("http", "https"):
        raise ProviderError(
            f"the video download redirected to a {target.scheme!r} URL",
            retryable=False,
            code="bad_redirect",
        )
    return target
