"""Veo 3 client on aiohttp: start a generation, poll its operation, stream the video.

Two dialects of one long-running-operation API:
- "gemini": the Gemini API (generativelanguage.googleapis.com), key in `x-goog-api-key`;
- "vertex": Vertex AI, an OAuth bearer token, polled with `fetchPredictOperation`.

Every failure is a ProviderError whose `retryable` says whether trying again may help; bad
parameters are an InvalidRequest raised before a paid call is made. The API key and the
token are sent only to the API's own origin and never appear in a message.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Literal

import aiohttp
import msgspec
from yarl import URL

from genqueue.errors import ConfigError, InvalidRequest, ProviderError

__all__ = [
    "DEFAULT_MODEL",
    "MAX_REDIRECTS",
    "Operation",
    "Veo3Client",
    "VideoParams",
    "VideoRef",
    "validate_params",
]

# The Veo 3.1 preview IDs (veo-3.1-*-preview) were reported retired on the Gemini API on
# 2026-10-22 (calls answer 404), and Google's model table retires the Veo 3.0 "-001" IDs on
# 2026-06-30 in favour of veo-3.1-generate-001. That stable (GA) ID is served by both the
# Gemini API and Vertex AI, so it is the default; VEO3_MODEL overrides it (e.g. the cheaper
# veo-3.1-fast-generate-001) when Google moves on.
DEFAULT_MODEL = "veo-3.1-generate-001"
MAX_REDIRECTS = 5
DURATIONS_S = (4, 6, 8)
ASPECT_RATIOS = ("16:9", "9:16")
RESOLUTIONS = ("720p", "1080p", "4k")
_RETRYABLE_GRPC = (13, 14)  # INTERNAL, UNAVAILABLE
_REDIRECTS = (301, 302, 303, 307, 308)
_GCS_BASE = "https://storage.googleapis.com"


class VideoParams(msgspec.Struct, frozen=True):
    """What to generate besides the prompt (Veo's `parameters`, in snake_case)."""

    duration: int = 8
    aspect_ratio: str = "16:9"
    resolution: str = "720p"
    negative_prompt: str | None = None
    person_generation: str | None = None
    sample_count: int = 1
    seed: int | None = None


class VideoRef(msgspec.Struct, frozen=True):
    """A finished video: a URI to download, or the bytes inline (base64)."""

    uri: str | None = None
    data_b64: str | None = None
    mime_type: str = "video/mp4"


class Operation(msgspec.Struct, frozen=True):
    """A Veo long-running operation; `videos` is filled once `done`."""

    name: str
    done: bool
    videos: list[VideoRef] = []


def validate_params(params: VideoParams) -> None:
    """Raise InvalidRequest naming the field if Veo would refuse these parameters."""
    if params.duration not in DURATIONS_S:
        raise InvalidRequest(
            f"duration must be 4, 6 or 8 seconds, not {params.duration!r}", field="duration"
        )
    if params.aspect_ratio not in ASPECT_RATIOS:
        raise InvalidRequest(
            f"aspect_ratio must be 16:9 or 9:16, not {params.aspect_ratio!r}", field="aspect_ratio"
        )
    if params.resolution not in RESOLUTIONS:
        raise InvalidRequest(
            f"resolution must be 720p, 1080p or 4k, not {params.resolution!r}", field="resolution"
        )
    if params.resolution != "720p" and params.duration != 8:
        raise InvalidRequest(
            f"resolution {params.resolution} needs duration 8, not {params.duration}",
            field="resolution",
        )
    if not 1 <= params.sample_count <= 4:
        raise InvalidRequest("sample_count must be between 1 and 4", field="sample_count")
    if params.seed is not None and not 0 <= params.seed < 2**32:
        raise InvalidRequest("seed must be between 0 and 4294967295", field="seed")


# -- Google's JSON shapes (unknown fields such as "@type" are ignored) -----------------------


class _GoogleError(msgspec.Struct):
    code: int = 0
    message: str = ""
    status: str = ""
    details: list[dict[str, Any]] = []


class _ErrorBody(msgspec.Struct):
    error: _GoogleError


class _Started(msgspec.Struct):
    name: str


class _GeminiVideo(msgspec.Struct):
    uri: str | None = None


class _GeminiSample(msgspec.Struct):
    video: _GeminiVideo | None = None


class _GeminiResult(msgspec.Struct, rename="camel"):
    generated_samples: list[_GeminiSample] = []
    rai_media_filtered_count: int = 0
    rai_media_filtered_reasons: list[str] = []


class _VertexVideo(msgspec.Struct, rename="camel"):
    gcs_uri: str | None = None
    bytes_base64_encoded: str | None = None
    mime_type: str | None = None


class _OpResponse(msgspec.Struct, rename="camel"):
    generate_video_response: _GeminiResult | None = None  # Gemini API
    videos: list[_VertexVideo] = []  # Vertex AI
    rai_media_filtered_count: int = 0
    rai_media_filtered_reasons: list[str] = []


class _RawOperation(msgspec.Struct):
    name: str = ""
    done: bool = False
    error: _GoogleError | None = None
    response: _OpResponse | None = None


_ENCODER = msgspec.json.Encoder()
_STARTED = msgspec.json.Decoder(_Started)
_OPERATION = msgspec.json.Decoder(_RawOperation)
_ERROR = msgspec.json.Decoder(_ErrorBody)


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
        model: str = DEFAULT_MODEL,
        request_timeout_s: float = 60.0,
    ):
        if dialect not in ("gemini", "vertex"):
            raise ConfigError(f"VEO3_DIALECT must be gemini or vertex, not {dialect!r}")
        if dialect == "vertex" and not project:
            raise ConfigError("VERTEX_PROJECT is required for the vertex dialect")
        self._session = session
        self._base = base_url.rstrip("/")
        self._origin = _origin(URL(self._base))
        self._dialect = dialect
        self._api_key = api_key
        self._access_token = access_token
        self._project = project
        self._location = location
        self.model = model
        self._timeout_s = request_timeout_s
        self._call_timeout = aiohttp.ClientTimeout(total=request_timeout_s)
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

    # -- public calls ---------------------------------------------------------------------

    async def start(self, prompt: str, params: VideoParams, *, model: str | None = None) -> str:
        """Start a generation (a paid call) and return the operation name."""
        model = model or self.model
        if not prompt.strip():
            raise InvalidRequest("prompt must not be blank", field="prompt")
        validate_params(params)
        body = {"instances": [{"prompt": prompt}], "parameters": self._parameters(params)}
        with self._guard("start"):
            payload = await self._call(
                "POST", self._model_url(model, "predictLongRunning"), body, "start", model
            )
            return _decode(_STARTED, payload, "start").name

    async def poll(self, name: str) -> Operation:
        """Read the operation once: running, finished with videos, or a ProviderError."""
        model = _model_of(name) or self.model
        with self._guard("poll"):
            if self._dialect == "gemini":
                url = f"{self._base}/v1beta/{name}"
                payload = await self._call("GET", url, None, "poll", model)
            else:
                url, body = self._fetch_url(name, model), {"operationName": name}
                payload = await self._call("POST", url, body, "poll", model)
            return _to_operation(_decode(_OPERATION, payload, "poll"), name)

    async def download(self, video: VideoRef, chunk_size: int = 1 << 16) -> AsyncIterator[bytes]:
        """Stream the video's bytes in chunks of at most `chunk_size`.

        Credentials go only to the API's origin, redirects included. A caller that may stop
        early should wrap the generator in `contextlib.aclosing` to free the connection.
        """
        if video.data_b64 is not None:
            for chunk in _inline_chunks(video.data_b64, chunk_size):
                yield chunk
            return
        url = _fetchable(video.uri)
        with self._guard("download"):
            async with self._follow(url) as resp:
                async for chunk in resp.content.iter_chunked(chunk_size):
                    yield chunk

    # -- requests -------------------------------------------------------------------------

    async def _call(
        self, method: str, url: str, body: dict[str, Any] | None, call: str, model: str
    ) -> bytes:
        data = None if body is None else _ENCODER.encode(body)
        headers = self._auth_headers()
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self._session.request(
            method,
            url,
            data=data,
            headers=headers,
            timeout=self._call_timeout,
            allow_redirects=False,
        ) as resp:
            payload = await resp.read()
            if resp.status >= 300:
                raise _http_error(resp.status, payload, resp.headers, call, model, self._credential)
            return payload

    @contextlib.asynccontextmanager
    async def _follow(self, url: URL) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET `url`, following redirects by hand so credentials never leave our origin."""
        for _ in range(MAX_REDIRECTS + 1):
            resp = await self._session.get(
                url,
                headers=self._headers_for(url),
                allow_redirects=False,
                timeout=self._stream_timeout,
            )
            if resp.status in _REDIRECTS:
                url = _next_hop(url, resp)
                continue
            try:
                if resp.status >= 300:
                    body = await resp.content.read(65536)
                    raise _http_error(
                        resp.status, body, resp.headers, "download", self.model, self._credential
                    )
                yield resp
            finally:
                resp.release()
            return
        raise ProviderError(
            f"the video download was redirected more than {MAX_REDIRECTS} times",
            retryable=False,
            code="too_many_redirects",
        )

    def _headers_for(self, url: URL) -> dict[str, str]:
        return self._auth_headers() if _origin(url) == self._origin else {}

    def _auth_headers(self) -> dict[str, str]:
        if self._dialect == "gemini":
            return {"x-goog-api-key": self._api_key} if self._api_key else {}
        return {"Authorization": f"Bearer {self._access_token}"} if self._access_token else {}

    @property
    def _credential(self) -> str:
        return "API key" if self._dialect == "gemini" else "access token"

    def _model_url(self, model: str, method: str) -> str:
        if self._dialect == "gemini":
            return f"{self._base}/v1beta/models/{model}:{method}"
        return (
            f"{self._base}/v1/projects/{self._project}/locations/{self._location}"
            f"/publishers/google/models/{model}:{method}"
        )

    def _fetch_url(self, name: str, model: str) -> str:
        prefix, found, _ = name.partition("/operations/")
        if found and prefix.startswith("projects/"):
            return f"{self._base}/v1/{prefix}:fetchPredictOperation"
        return self._model_url(model, "fetchPredictOperation")

    def _parameters(self, params: VideoParams) -> dict[str, Any]:
        out: dict[str, Any] = {
            "aspectRatio": params.aspect_ratio,
            "resolution": params.resolution,
            "durationSeconds": params.duration,
            "negativePrompt": params.negative_prompt,
            "personGeneration": params.person_generation,
            "sampleCount": params.sample_count,
        }
        if self._dialect == "vertex":
            # Vertex documents generateAudio as required for Veo 3 models and accepts a seed;
            # the Gemini API refuses both (audio is always on there), so they are never sent.
            out["generateAudio"] = True
            out["seed"] = params.seed
        return {key: value for key, value in out.items() if value is not None}

    # -- errors ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self, call: str) -> Iterator[None]:
        """Turn transport failures into ProviderErrors and strip secrets from every message."""
        try:
            yield
        except ProviderError as exc:
            clean = self._redact(exc)
            if clean is exc:
                raise
            raise clean from None
        except TimeoutError as exc:
            raise ProviderError(
                f"Veo {call} timed out after {self._timeout_s:g} s", retryable=True, code="timeout"
            ) from exc
        except aiohttp.ClientPayloadError as exc:
            raise ProviderError(
                f"Veo {call}: the connection was cut before the body ended",
                retryable=True,
                code="connection_cut",
            ) from exc
        except aiohttp.ClientError as exc:
            message = self._scrub(f"Veo {call}: connection failed ({type(exc).__name__}: {exc})")
            raise ProviderError(message, retryable=True, code="connection") from None

    def _scrub(self, text: str) -> str:
        for secret in (self._api_key, self._access_token):
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


def _decode(decoder: msgspec.json.Decoder[Any], payload: bytes, call: str) -> Any:
    try:
        return decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProviderError(
            f"Veo {call} answered malformed JSON: {exc}", retryable=True, code="malformed_response"
        ) from None


def _to_operation(raw: _RawOperation, name: str) -> Operation:
    name = raw.name or name
    if not raw.done:
        return Operation(name=name, done=False)
    if raw.error is not None:
        code = raw.error.code
        raise ProviderError(
            f"Veo operation failed (gRPC code {code}): {raw.error.message}",
            retryable=code in _RETRYABLE_GRPC,
            code="operation_error",
        )
    response = raw.response or _OpResponse()
    videos = _videos_of(response)
    if not videos:
        raise _no_video(response)
    return Operation(name=name, done=True, videos=videos)


def _videos_of(response: _OpResponse) -> list[VideoRef]:
    gemini = response.generate_video_response or _GeminiResult()
    samples = gemini.generated_samples
    videos = [VideoRef(uri=s.video.uri) for s in samples if s.video and s.video.uri]
    for v in response.videos:
        if v.gcs_uri or v.bytes_base64_encoded:
            mime = v.mime_type or "video/mp4"
            videos.append(VideoRef(uri=v.gcs_uri, data_b64=v.bytes_base64_encoded, mime_type=mime))
    return videos


def _no_video(response: _OpResponse) -> ProviderError:
    gemini = response.generate_video_response or _GeminiResult()
    reasons = gemini.rai_media_filtered_reasons + response.rai_media_filtered_reasons
    if reasons or gemini.rai_media_filtered_count or response.rai_media_filtered_count:
        text = "; ".join(reasons) or "no reason given"
        return ProviderError(
            f"Veo's safety filter blocked the video: {text}", retryable=False, code="safety_blocked"
        )
    return ProviderError(
        "Veo finished the operation without a video", retryable=False, code="no_video"
    )


def _http_error(
    status: int, body: bytes, headers: Mapping[str, str], call: str, model: str, credential: str
) -> ProviderError:
    google = _google_error(body)
    detail = google.message if google and google.message else _snippet(body)
    reasons = {d.get("reason") for d in google.details} if google else set()
    if status in (401, 403) or (status == 400 and "API_KEY_INVALID" in reasons):
        return ProviderError(
            f"Veo refused the {credential} (HTTP {status}): {detail}",
            retryable=False,
            status=status,
            code="auth",
        )
    if status == 404:
        return _not_found(call, model, detail)
    if status == 429:
        return ProviderError(
            f"Veo rate limit or quota exceeded (HTTP 429): {detail}",
            retryable=True,
            status=429,
            retry_after_s=_retry_after_s(headers, google),
            code="rate_limited",
        )
    if status >= 500 or status == 408:
        return ProviderError(
            f"Veo {call} failed with HTTP {status}: {detail}",
            retryable=True,
            status=status,
            code="server_error",
        )
    if status == 400 and google and google.message:
        return ProviderError(google.message, retryable=False, status=400, code="bad_request")
    return ProviderError(
        f"Veo {call} failed with HTTP {status}: {detail}",
        retryable=False,
        status=status,
        code="bad_request" if status == 400 else "http_error",
    )


def _not_found(call: str, model: str, detail: str) -> ProviderError:
    if call == "start":
        message, code = f"Veo model {model!r} is unknown or retired (HTTP 404)", "model_not_found"
    elif call == "poll":
        message, code = "Veo operation not found (HTTP 404)", "operation_not_found"
    else:
        message, code = "the video was not found; Veo keeps it 2 days (HTTP 404)", "video_not_found"
    return ProviderError(f"{message}: {detail}", retryable=False, status=404, code=code)


def _google_error(body: bytes) -> _GoogleError | None:
    try:
        return _ERROR.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _snippet(body: bytes, limit: int = 200) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    if not text:
        return "empty body"
    return f"non-JSON body: {text[:limit]}{'…' if len(text) > limit else ''}"


def _retry_after_s(headers: Mapping[str, str], google: _GoogleError | None) -> float | None:
    """Seconds from the Retry-After header, else from Google's RetryInfo detail ("37s")."""
    candidates = [headers.get("Retry-After", "")]
    for detail in google.details if google else []:
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            candidates.append(str(detail.get("retryDelay", "")).removesuffix("s"))
    for value in candidates:
        with contextlib.suppress(ValueError):
            return max(0.0, float(value))
    return None


def _origin(url: URL) -> tuple[str, str | None, int | None]:
    """Scheme, host and port (the default one when implicit): where credentials may go."""
    return url.scheme, url.host, url.port


def _model_of(name: str) -> str | None:
    before, found, _ = name.partition("/operations/")
    return before.rsplit("models/", 1)[-1] if found and "models/" in before else None


def _inline_chunks(data_b64: str, chunk_size: int) -> Iterator[bytes]:
    try:
        data = base64.b64decode(data_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ProviderError(
            "Veo returned an inline video that is not valid base64",
            retryable=False,
            code="malformed_video",
        ) from None
    view = memoryview(data)
    for offset in range(0, len(view), chunk_size):
        yield bytes(view[offset : offset + chunk_size])


def _fetchable(uri: str | None) -> URL:
    """The http(s) URL of a video URI; gs://bucket/object maps to Cloud Storage's host."""
    if not uri:
        raise ProviderError("the video has neither a URI nor inline bytes", retryable=False)
    if uri.startswith("gs://"):
        return URL(f"{_GCS_BASE}/{uri.removeprefix('gs://')}")
    url = URL(uri)
    if url.scheme not in ("http", "https"):
        raise ProviderError(f"cannot download a {url.scheme!r} URI", retryable=False)
    return url


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
