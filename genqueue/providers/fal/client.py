"""fal.ai's queue API on aiohttp: submit a generation, read its status and result, stream
its video, cancel it.

    POST {queue}/{model}                         -> {request_id, status_url, response_url, …}
    GET  {queue}/{app}/requests/{id}/status      -> {status: IN_QUEUE | IN_PROGRESS | COMPLETED}
    GET  {queue}/{app}/requests/{id}             -> the model's output {video: {url, …}}
    PUT  {queue}/{app}/requests/{id}/cancel      -> 202 CANCELLATION_REQUESTED | 400 ALREADY_…

`{app}` is the model id's first two segments (`fal-ai/veo3.1/fast` is app `fal-ai/veo3.1`),
as fal-client's `AsyncRequestHandle.from_request_id` builds it; every call carries
`Authorization: Key FAL_KEY`. The operation name this client hands out, and the checkpoint
the GenerationActor stores before its first poll, is `{app}/requests/{request_id}`: the
URLs are rebuilt from it and the configured queue host, so the key only ever goes there.
The video URL (fal's CDN) is fetched without the key.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import msgspec
from yarl import URL

from genqueue.errors import InvalidRequest, ProviderError
from genqueue.providers.answers import decode_answer
from genqueue.providers.fal.models import DEFAULT_MODEL
from genqueue.providers.veo.failures import retry_after_s
from genqueue.providers.veo.shapes import Operation, VideoParams, VideoRef

__all__ = ["FalClient", "fal_input"]

_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9][A-Za-z0-9._\-]*){1,4}$")
_NAME = re.compile(r"^[A-Za-z0-9._\-]+/[A-Za-z0-9._\-]+/requests/[A-Za-z0-9._\-]+$")
_ENCODER = msgspec.json.Encoder()


class Submitted(msgspec.Struct):
    request_id: str


class _Status(msgspec.Struct):
    status: str
    error: str | None = None
    error_type: str | None = None


class _File(msgspec.Struct):
    url: str
    content_type: str = "video/mp4"


class _Output(msgspec.Struct):
    video: _File | None = None


_SUBMITTED = msgspec.json.Decoder(Submitted)
_STATUS = msgspec.json.Decoder(_Status)
_OUTPUT = msgspec.json.Decoder(_Output)


def fal_input(prompt: str, params: VideoParams) -> dict[str, Any]:
    """The request body of fal's Veo 3.1 endpoints (their names, `duration` as "8s")."""
    body: dict[str, Any] = {
        "prompt": prompt,
        "aspect_ratio": params.aspect_ratio,
        "duration": f"{params.duration}s",
        "resolution": params.resolution,
        "negative_prompt": params.negative_prompt,
        "seed": params.seed,
        "generate_audio": params.generate_audio,
    }
    return {key: value for key, value in body.items() if value is not None}


def app_of(model: str) -> str:
    return "/".join(model.split("/")[:2])


class FalClient:
    """Starts fal generations, polls them and streams their videos, over one session."""

    name = "fal"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        key: str,
        base_url: str = "https://queue.fal.run",
        model: str = DEFAULT_MODEL,
        request_timeout_s: float = 60.0,
        ssl: Any = True,
    ):
        self._session = session
        self._key = key
        self._base = base_url.rstrip("/")
        self.model = model
        self._ssl = ssl
        self._timeout_s = request_timeout_s
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=request_timeout_s, sock_read=request_timeout_s
        )

    def __repr__(self) -> str:  # never shows the key
        return f"FalClient(base_url={self._base!r}, model={self.model!r})"

    async def start(self, prompt: str, params: VideoParams, *, model: str | None = None) -> str:
        """Submit (a paid call); returns `{app}/requests/{request_id}`."""
        model = model or self.model
        if not _MODEL.fullmatch(model) or ".." in model:
            raise InvalidRequest(f"{model[:80]!r} is not a fal model id", field="model")
        with self._guard("submit", paid=True):
            payload = await self._call("POST", f"{self._base}/{model}", fal_input(prompt, params))
            request_id = decode_answer(_SUBMITTED, payload, "fal submit").request_id
        name = f"{app_of(model)}/requests/{request_id}"
        if not _NAME.fullmatch(name):
            raise ProviderError(
                f"fal answered a request id it cannot be asked about: {request_id[:80]!r}",
                retryable=False,
                code="malformed_response",
            )
        return name

    async def poll(self, name: str) -> Operation:
        """The status; once COMPLETED, the result with its video."""
        if not _NAME.fullmatch(name):
            raise ProviderError(f"not a fal request: {name[:200]!r}", retryable=False)
        with self._guard("status"):
            payload = await self._call("GET", f"{self._base}/{name}/status?logs=1", None)
            status = decode_answer(_STATUS, payload, "fal status")
            if status.status in ("IN_QUEUE", "IN_PROGRESS"):
                return Operation(name=name, done=False)
            if status.status != "COMPLETED":
                raise ProviderError(
                    f"fal answered an unknown status {status.status[:40]!r}",
                    retryable=True,
                    code="malformed_response",
                )
            if status.error:
                raise _failed(status.error, status.error_type)
            payload = await self._call("GET", f"{self._base}/{name}", None)
            output = decode_answer(_OUTPUT, payload, "fal result")
        if output.video is None:
            raise ProviderError("fal finished without a video", retryable=False, code="no_video")
        return Operation(
            name=name,
            done=True,
            videos=[VideoRef(uri=output.video.url, mime_type=output.video.content_type)],
        )

    async def cancel(self, name: str) -> None:
        """Ask fal to cancel; a request already completed (400) is no error."""
        if not _NAME.fullmatch(name):
            return
        with self._guard("cancel"), contextlib.suppress(ProviderError):
            await self._call("PUT", f"{self._base}/{name}/cancel", None)

    async def download(self, video: VideoRef, chunk_size: int = 1 << 16) -> AsyncIterator[bytes]:
        url = URL(video.uri or "")
        if url.scheme not in ("http", "https"):
            raise ProviderError(f"cannot download {video.uri!r}", retryable=False)
        with self._guard("download"):
            async with self._session.get(
                url, timeout=self._stream_timeout, ssl=self._ssl, allow_redirects=True
            ) as resp:
                if resp.status >= 300:
                    body = await resp.content.read(65536)
                    raise _http_error(resp.status, body, resp.headers, "download")
                async for chunk in resp.content.iter_chunked(chunk_size):
                    yield chunk

    async def _call(self, method: str, url: str, body: dict[str, Any] | None) -> bytes:
        headers = {"Authorization": f"Key {self._key}", "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = _ENCODER.encode(body)
        async with self._session.request(
            method,
            URL(url, encoded=True),
            data=data,
            headers=headers,
            timeout=self._timeout,
            allow_redirects=False,
            ssl=self._ssl,
        ) as resp:
            payload = await resp.read()
            if resp.status >= 300:
                raise _http_error(resp.status, payload, resp.headers, method)
            return payload

    @contextlib.contextmanager
    def _guard(self, call: str, *, paid: bool = False) -> Iterator[None]:
        try:
            yield
        except ProviderError as exc:
            if self._key and self._key in exc.message:
                raise ProviderError(
                    exc.message.replace(self._key, "[redacted]"),
                    retryable=exc.retryable,
                    status=exc.status,
                    code=exc.code,
                ) from None
            raise
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise ProviderError(
                f"fal {call}: cannot connect ({type(exc).__name__})",
                retryable=True,
                code="connection",
            ) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            if paid:
                raise ProviderError(
                    f"fal submit: the answer was lost after the request was sent "
                    f"({type(exc).__name__}); fal may have queued (and will charge for) it",
                    retryable=False,
                    code="ambiguous_start",
                ) from None
            raise ProviderError(
                f"fal {call} failed ({type(exc).__name__})", retryable=True, code="connection"
            ) from None


def _failed(error: str, error_type: str | None) -> ProviderError:
    kind = (error_type or "").lower()
    if "content_policy" in kind or "safety" in kind:
        return ProviderError(
            f"fal refused the content: {error[:300]}", retryable=False, code="safety_blocked"
        )
    return ProviderError(f"fal failed: {error[:300]}", retryable=False, code="operation_error")


def _detail(body: bytes) -> tuple[str, str]:
    """fal's error body: `{"detail": "text"}` or FastAPI's `{"detail": [{loc, msg, type}]}`."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body[:300].decode("utf-8", "replace"), ""
    detail = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        loc = ".".join(str(p) for p in first.get("loc", []) if p != "body")
        return f"{loc}: {first.get('msg', '')}".strip(": "), str(first.get("type", ""))
    return str(detail if detail is not None else data)[:300], ""


def _http_error(status: int, body: bytes, headers: Any, call: str) -> ProviderError:
    text, kind = _detail(body)
    message = f"fal {call} answered HTTP {status}: {text}"
    if "content_policy" in kind:
        return ProviderError(message, retryable=False, status=status, code="safety_blocked")
    if status == 429:
        return ProviderError(
            message,
            retryable=True,
            status=status,
            retry_after_s=retry_after_s(headers, None),
            code="rate_limited",
        )
    if status in (401, 403):
        return ProviderError(
            message + " (check FAL_KEY)", retryable=False, status=status, code="auth"
        )
    if status == 404:
        code = "operation_not_found" if call == "GET" else "model_not_found"
        return ProviderError(message, retryable=False, status=status, code=code)
    if status >= 500 or status == 408:
        return ProviderError(message, retryable=True, status=status, code="server_error")
    return ProviderError(message, retryable=False, status=status, code="bad_request")
