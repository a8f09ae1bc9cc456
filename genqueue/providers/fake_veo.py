"""A Veo-compatible HTTP server (aiohttp) for tests and the demo, speaking both dialects.

Gemini API: `POST /v1beta/models/{m}:predictLongRunning`, `GET /v1beta/{operation name}`,
`GET /v1beta/files/{id}:download`. Vertex AI: `POST /v1/projects/{p}/locations/{l}/publishers/
google/models/{m}:predictLongRunning` and `…:fetchPredictOperation`. Operations finish
`latency_s` after they start, in the time of an injected clock. It serves a small valid MP4
(built here, streamed in chunks), counts what it was asked, and lets a test inject faults.
Prompt markers: "[unsafe]" → safety block, "[op-error:N]" → operation fails with gRPC code N,
"[bad-request]" → 400.

A test in another process (`main.py fake-veo`) reads and steers the fake over HTTP:
- `GET /_fake/stats`: the counters (`starts`, `polls`, `downloads`, `rateLimited`), the
  accepted start times (`startTimes`, clock seconds, for per-minute counts), the faults
  still armed (`faults`) and every operation started.
- `POST /_fake/faults` with a JSON object (every key optional; unknown keys are a 400)
  sets the same controls a test in this process has as methods and attributes, and
  answers with `faults`, the controls now armed:
  `{"fail_starts" | "fail_polls" | "fail_downloads": {"status": 500, "count": 1,
  "retry_after_s": null, "html": false, "reason": null}}` queue failures (`reason` and
  `html` as in the methods; downloads take `status` and `count` only),
  `"hang_starts" | "hang_polls": bool`, `"malformed_json_next": bool`,
  `"cut_download": bool` (every download, while true), `"cut_downloads": N` (the next N),
  `"rate_limit_per_minute": N`, `"latency_s": S`, `"release": true` (hanging requests
  answer 503 now), `"clear": true` (disarm everything first, releasing any hang).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import math
import re
import signal
import struct
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
from aiohttp import web

from genqueue.clock import RealClock
from genqueue.providers.veo3 import DEFAULT_MODEL

__all__ = [
    "FakeVeo",
    "FakeVeoServer",
    "FaultControls",
    "FaultSpec",
    "OpInfo",
    "RecordedRequest",
    "build_mp4",
    "iter_mp4",
    "serve_fake_veo",
]

KNOWN_MODELS = (DEFAULT_MODEL, "veo-3.1-fast-generate-001")
SAFETY_REASON = (
    "Veo could not generate videos because the input prompt violates Google's Responsible AI "
    "practices. Support codes: 58061214"
)
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_GRPC_MESSAGES = {3: "Invalid argument.", 13: "Internal error.", 14: "Service unavailable."}
_OP_ERROR = re.compile(r"\[op-error:(\d+)\]")
_BAD_KEY = "API key not valid. Please pass a valid API key."
_NO_KEY = "Method doesn't allow unregistered callers. Please use an API key."
_BAD_TOKEN = "Request had invalid authentication credentials. Expected OAuth 2 access token."


# -- the video ----------------------------------------------------------------------------------


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _mp4_header(total_size: int) -> bytes:
    """ftyp + moov/mvhd (an 8 s movie) + the header of an mdat filling up to `total_size`."""
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2mp41")
    matrix = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    mvhd = _box(
        b"mvhd",
        struct.pack(">IIIIIIH", 0, 0, 0, 1000, 8000, 0x10000, 0x100)
        + bytes(10)
        + matrix
        + bytes(24)
        + struct.pack(">I", 2),
    )
    head = ftyp + _box(b"moov", mvhd)
    mdat_size = total_size - len(head)
    if not 8 <= mdat_size < 2**32:
        raise ValueError(f"video_size must be between {len(head) + 8} and 4 GiB")
    return head + struct.pack(">I", mdat_size) + b"mdat"


_FILL = bytes(range(256)) * 256  # 64 KiB of a recognisable pattern


def iter_mp4(total_size: int) -> Iterator[bytes]:
    """The fake's video, `total_size` bytes, in chunks of at most 64 KiB (never held whole)."""
    head = _mp4_header(total_size)
    yield head
    left = total_size - len(head)
    while left > 0:
        chunk = _FILL[: min(left, len(_FILL))]
        left -= len(chunk)
        yield chunk


def build_mp4(total_size: int) -> bytes:
    """The whole video in memory: only for small sizes."""
    return b"".join(iter_mp4(total_size))


# -- state ----------------------------------------------------------------------------------------


class _Clock(Protocol):
    def now(self) -> float: ...


@dataclass
class OpInfo:
    """One operation the fake started."""

    name: str
    model: str
    dialect: str
    prompt: str
    parameters: dict[str, Any]
    started_at: float
    done_at: float
    file_ids: list[str]
    outcome: str  # "success" | "safety_blocked" | "error"
    error_code: int | None = None
    polls: int = 0
    downloads: int = 0


@dataclass
class RecordedRequest:
    """A request as received (header names in lower case)."""

    method: str
    path_qs: str
    headers: dict[str, str]


@dataclass
class _Failure:
    status: int
    retry_after_s: float | None = None
    html: bool = False
    reason: str | None = None


@dataclass
class _Faults:
    starts: collections.deque[_Failure] = field(default_factory=collections.deque)
    polls: collections.deque[_Failure] = field(default_factory=collections.deque)
    downloads: collections.deque[_Failure] = field(default_factory=collections.deque)


class FaultSpec(msgspec.Struct, forbid_unknown_fields=True):
    """Failures to queue: the next `count` calls answer `status` (`POST /_fake/faults`)."""

    status: int = 500
    count: int = 1
    retry_after_s: float | None = None
    html: bool = False
    reason: str | None = None


class FaultControls(msgspec.Struct, forbid_unknown_fields=True):
    """The body of `POST /_fake/faults`: each key left out (None) leaves its control alone."""

    fail_starts: FaultSpec | None = None
    fail_polls: FaultSpec | None = None
    fail_downloads: FaultSpec | None = None
    hang_starts: bool | None = None
    hang_polls: bool | None = None
    malformed_json_next: bool | None = None
    cut_download: bool | None = None
    cut_downloads: int | None = None
    rate_limit_per_minute: int | None = None
    latency_s: float | None = None
    release: bool = False
    clear: bool = False


_CONTROLS = msgspec.json.Decoder(FaultControls)


def _google_error(
    status: int, message: str, *, retry_after_s: float | None = None, reason: str | None = None
) -> web.Response:
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    details: list[dict[str, Any]] = []
    if reason:
        details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason})
    headers = {}
    if retry_after_s is not None:
        headers["Retry-After"] = f"{retry_after_s:g}"
        retry_info = "type.googleapis.com/google.rpc.RetryInfo"
        details.append({"@type": retry_info, "retryDelay": f"{retry_after_s:g}s"})
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=status, headers=headers)


def _failure_response(failure: _Failure) -> web.Response:
    if failure.html:
        text = f"<html><body><h1>{failure.status} Server Error</h1></body></html>"
        return web.Response(status=failure.status, text=text, content_type="text/html")
    message = "Injected failure." if failure.status != 429 else "Resource has been exhausted."
    return _google_error(
        failure.status, message, retry_after_s=failure.retry_after_s, reason=failure.reason
    )


def _check_parameters(params: dict[str, Any], dialect: str) -> str | None:
    """Google's 400 message for parameters the real API refuses, or None."""
    if dialect == "gemini":
        for name in ("generateAudio", "seed"):
            if name in params:
                return f"Invalid JSON payload received. Unknown name \"{name}\" at 'parameters'."
    duration = params.get("durationSeconds", 8)
    if duration not in (4, 6, 8):
        return (
            "The number value for `durationSeconds` is out of bound. "
            "Please provide a value between 4 and 8, inclusive."
        )
    if params.get("aspectRatio", "16:9") not in ("16:9", "9:16"):
        return "`aspectRatio` must be 16:9 or 9:16."
    if params.get("resolution", "720p") not in ("720p", "1080p", "4k"):
        return "`resolution` must be 720p, 1080p or 4k."
    if params.get("resolution", "720p") != "720p" and duration != 8:
        return "1080p and 4k videos must be 8 seconds long."
    return None


class FakeVeo:
    """The fake's state, counters and fault controls; `app` is its aiohttp application."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        access_token: str | None = None,
        latency_s: float = 0.0,
        clock: _Clock | None = None,
        video_size: int = 256 * 1024,
        models: Iterable[str] = KNOWN_MODELS,
        rate_limit_per_minute: int = 0,
        vertex_inline_max_bytes: int = 1 << 20,
    ):
        self.api_key, self.access_token = api_key, access_token
        self.latency_s = latency_s
        self.clock: _Clock = clock or RealClock()
        self.video_size = video_size
        _mp4_header(video_size)  # fail now on an impossible size
        self.models = set(models)
        self.rate_limit_per_minute = rate_limit_per_minute
        self.vertex_inline_max_bytes = vertex_inline_max_bytes
        self.base_url = ""
        # Fault controls: plain attributes a test sets at any time.
        self.safety_marker = "[unsafe]"
        self.bad_request_marker = "[bad-request]"
        self.hang_starts = self.hang_polls = False
        self.malformed_json_next = False
        self.cut_download = False
        self.cut_downloads_left = 0  # the next N downloads are cut (see cut_downloads)
        self.redirect_downloads_to: str | None = None
        self._faults = _Faults()
        self._released: asyncio.Event | None = None
        # Counters.
        self.starts = self.polls = self.downloads = self.rate_limited = 0
        self.start_times: list[float] = []
        self.operations: dict[str, OpInfo] = {}
        self.requests: collections.deque[RecordedRequest] = collections.deque(maxlen=10_000)
        self.last_start_body: dict[str, Any] | None = None
        self._files: dict[str, OpInfo] = {}
        self.app = self._build_app()

    # -- controls ---------------------------------------------------------------------------

    def fail_starts(
        self,
        status: int = 500,
        count: int = 1,
        retry_after_s: float | None = None,
        *,
        html: bool = False,
        reason: str | None = None,
    ) -> None:
        """Answer the next `count` start requests with `status` (Google's error shape)."""
        failure = _Failure(status, retry_after_s, html, reason)
        self._faults.starts.extend([failure] * count)

    def fail_polls(
        self,
        status: int = 500,
        count: int = 1,
        retry_after_s: float | None = None,
        *,
        html: bool = False,
        reason: str | None = None,
    ) -> None:
        """Answer the next `count` polls with `status`."""
        self._faults.polls.extend([_Failure(status, retry_after_s, html, reason)] * count)

    def fail_downloads(self, status: int = 500, count: int = 1) -> None:
        """Answer the next `count` downloads with `status`."""
        self._faults.downloads.extend([_Failure(status)] * count)

    def cut_downloads(self, count: int = 1) -> None:
        """Cut the next `count` downloads half-way (the connection drops mid-body)."""
        self.cut_downloads_left += count

    def release(self) -> None:
        """Let every hanging request go (each answers 503); called when the server stops."""
        if self._released is None:
            self._released = asyncio.Event()
        self._released.set()

    def hang(self, *, starts: bool | None = None, polls: bool | None = None) -> None:
        """Make starts and / or polls hang (until `release`), or stop hanging new ones."""
        if (starts or polls) and self._released is not None and self._released.is_set():
            self._released = None  # released before: hang anew
        if starts is not None:
            self.hang_starts = starts
        if polls is not None:
            self.hang_polls = polls

    def clear_faults(self) -> None:
        """Disarm every fault control and let hanging requests go."""
        self._faults = _Faults()
        self.hang_starts = self.hang_polls = False
        self.malformed_json_next = self.cut_download = False
        self.cut_downloads_left = 0
        self.release()

    def apply(self, controls: FaultControls) -> None:
        """Set the controls `controls` names (what `POST /_fake/faults` does)."""
        if controls.clear:
            self.clear_faults()
        for spec, method in (
            (controls.fail_starts, self.fail_starts),
            (controls.fail_polls, self.fail_polls),
        ):
            if spec is not None:
                method(
                    spec.status, spec.count, spec.retry_after_s, html=spec.html, reason=spec.reason
                )
        if controls.fail_downloads is not None:
            self.fail_downloads(controls.fail_downloads.status, controls.fail_downloads.count)
        self.hang(starts=controls.hang_starts, polls=controls.hang_polls)
        if controls.malformed_json_next is not None:
            self.malformed_json_next = controls.malformed_json_next
        if controls.cut_download is not None:
            self.cut_download = controls.cut_download
        if controls.cut_downloads is not None:
            self.cut_downloads(controls.cut_downloads)
        if controls.rate_limit_per_minute is not None:
            self.rate_limit_per_minute = controls.rate_limit_per_minute
        if controls.latency_s is not None:
            self.latency_s = controls.latency_s
        if controls.release:
            self.release()

    def armed(self) -> dict[str, Any]:
        """The fault controls now armed (what `/_fake/stats` and `/_fake/faults` show)."""
        return {
            "fail_starts": len(self._faults.starts),
            "fail_polls": len(self._faults.polls),
            "fail_downloads": len(self._faults.downloads),
            "hang_starts": self.hang_starts,
            "hang_polls": self.hang_polls,
            "malformed_json_next": self.malformed_json_next,
            "cut_download": self.cut_download,
            "cut_downloads": self.cut_downloads_left,
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "latency_s": self.latency_s,
        }

    def starts_per_minute(self, now: float | None = None) -> int:
        """Accepted starts in the minute before `now` (clock time)."""
        now = self.clock.now() if now is None else now
        return sum(1 for t in self.start_times if now - 60 < t <= now)

    # -- the app --------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.requests.append(RecordedRequest(request.method, request.path_qs, headers))
            response: web.StreamResponse = await handler(request)
            return response

        async def on_shutdown(_app: web.Application) -> None:
            self.release()

        app = web.Application(middlewares=[record])
        app.on_shutdown.append(on_shutdown)
        vertex = "/v1/projects/{project}/locations/{location}/publishers/google/models/{action}"
        app.add_routes(
            [
                web.post("/v1beta/models/{action}", self._gemini_start),
                web.get("/v1beta/models/{model}/operations/{op}", self._gemini_poll),
                web.get("/v1beta/files/{action}", self._download),
                web.post(vertex, self._vertex_call),
                web.get("/media/{file}", self._media),
                web.get("/_fake/stats", self._stats),
                web.post("/_fake/faults", self._set_faults),
            ]
        )
        return app

    async def _gemini_start(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["action"].partition(":")
        if method != "predictLongRunning":
            return _google_error(404, f"Method {method!r} not found.")
        return await self._start(request, "gemini", model)

    async def _vertex_call(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["action"].partition(":")
        if method == "predictLongRunning":
            return await self._start(request, "vertex", model)
        if method == "fetchPredictOperation":
            return await self._vertex_poll(request)
        return _google_error(404, f"Method {method!r} not found.")

    async def _gate(
        self, request: web.Request, dialect: str, hang: bool, faults: collections.deque[_Failure]
    ) -> web.StreamResponse | None:
        """Auth, then the injected faults in order; None lets the request through."""
        denied = self._auth_failure(request, dialect)
        if denied is not None:
            return denied
        if hang:
            if self._released is None:
                self._released = asyncio.Event()
            await self._released.wait()
            return _google_error(503, "The service is shutting down.")
        if faults:
            return _failure_response(faults.popleft())
        if self.malformed_json_next:
            self.malformed_json_next = False
            return web.Response(text='{"name": "models/', content_type="application/json")
        return None

    def _auth_failure(self, request: web.Request, dialect: str) -> web.Response | None:
        """Gemini routes want the key, Vertex routes the token, downloads either one."""
        key = request.headers.get("x-goog-api-key")
        token_ok = request.headers.get("Authorization") == f"Bearer {self.access_token}"
        if dialect == "vertex" or (dialect == "any" and self.api_key is None):
            return None if self.access_token is None or token_ok else _google_error(401, _BAD_TOKEN)
        if self.api_key is None or key == self.api_key:
            return None
        if dialect == "any" and self.access_token is not None and token_ok:
            return None
        if key is None:
            return _google_error(403, _NO_KEY)
        return _google_error(401, _BAD_KEY, reason="API_KEY_INVALID")

    # -- start ----------------------------------------------------------------------------

    async def _start(self, request: web.Request, dialect: str, model: str) -> web.StreamResponse:
        gated = await self._gate(request, dialect, self.hang_starts, self._faults.starts)
        if gated is not None:
            return gated
        if model not in self.models:
            return _google_error(
                404,
                f"models/{model} is not found for API version v1beta, or is not supported "
                "for predictLongRunning. Call ListModels to see the available models.",
            )
        try:
            body = await request.json()
            prompt = str(body["instances"][0]["prompt"])
            params = dict(body.get("parameters") or {})
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return _google_error(400, "Invalid JSON payload received.")
        self.last_start_body = body
        refused = _check_parameters(params, dialect)
        if refused is None and self.bad_request_marker in prompt:
            refused = "Request contains an invalid argument."
        if refused is not None:
            return _google_error(400, refused)
        limited = self._rate_limit()
        if limited is not None:
            return limited
        op = self._create_op(request, dialect, model, prompt, params)
        return web.json_response({"name": op.name})

    def _rate_limit(self) -> web.Response | None:
        limit = self.rate_limit_per_minute
        now = self.clock.now()
        recent = [t for t in self.start_times if t > now - 60]
        if not limit or len(recent) < limit:
            return None
        self.rate_limited += 1
        wait_s = max(1, math.ceil(recent[-limit] + 60 - now))
        return _google_error(429, "Resource has been exhausted.", retry_after_s=wait_s)

    def _create_op(
        self, request: web.Request, dialect: str, model: str, prompt: str, params: dict[str, Any]
    ) -> OpInfo:
        op_id = uuid.uuid4().hex[:16]
        if dialect == "gemini":
            name = f"models/{model}/operations/{op_id}"
        else:
            info = request.match_info
            name = (
                f"projects/{info['project']}/locations/{info['location']}"
                f"/publishers/google/models/{model}/operations/{op_id}"
            )
        outcome, code = "success", None
        if self.safety_marker and self.safety_marker in prompt:
            outcome = "safety_blocked"
        elif (match := _OP_ERROR.search(prompt)) is not None:
            outcome, code = "error", int(match.group(1))
        now = self.clock.now()
        count = int(params.get("sampleCount", 1))
        files = [f"{op_id}-{i}" for i in range(count)] if outcome == "success" else []
        done_at = now + self.latency_s
        op = OpInfo(name, model, dialect, prompt, params, now, done_at, files, outcome, code)
        self.operations[name] = op
        self._files.update(dict.fromkeys(files, op))
        self.starts += 1
        self.start_times.append(now)
        return op

    # -- poll -----------------------------------------------------------------------------

    async def _gemini_poll(self, request: web.Request) -> web.StreamResponse:
        gated = await self._gate(request, "gemini", self.hang_polls, self._faults.polls)
        if gated is not None:
            return gated
        info = request.match_info
        return self._answer_poll(request, f"models/{info['model']}/operations/{info['op']}")

    async def _vertex_poll(self, request: web.Request) -> web.StreamResponse:
        gated = await self._gate(request, "vertex", self.hang_polls, self._faults.polls)
        if gated is not None:
            return gated
        try:
            name = str((await request.json())["operationName"])
        except (ValueError, KeyError, TypeError):
            return _google_error(400, "Invalid JSON payload received.")
        return self._answer_poll(request, name)

    def _answer_poll(self, request: web.Request, name: str) -> web.StreamResponse:
        self.polls += 1
        op = self.operations.get(name)
        if op is None:
            return _google_error(404, f"Operation not found: {name}")
        op.polls += 1
        if self.clock.now() < op.done_at:
            return web.json_response({"name": op.name})
        base = f"{request.scheme}://{request.host}"
        body: dict[str, Any] = {"name": op.name, "done": True}
        if op.outcome == "error":
            code = op.error_code or 13
            body["error"] = {"code": code, "message": _GRPC_MESSAGES.get(code, "Operation failed.")}
        elif op.dialect == "gemini":
            body["response"] = {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                "PredictLongRunningResponse",
                "generateVideoResponse": self._gemini_result(op, base),
            }
        else:
            body["response"] = self._vertex_result(op, base)
        return web.json_response(body)

    def _gemini_result(self, op: OpInfo, base: str) -> dict[str, Any]:
        if op.outcome == "safety_blocked":
            return {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons": [SAFETY_REASON]}
        return {
            "generatedSamples": [
                {"video": {"uri": f"{base}/v1beta/files/{fid}:download?alt=media"}}
                for fid in op.file_ids
            ]
        }

    def _vertex_result(self, op: OpInfo, base: str) -> dict[str, Any]:
        result: dict[str, Any] = {
            "@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse"
        }
        if op.outcome == "safety_blocked":
            return result | {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons": [SAFETY_REASON]}
        if self.video_size <= self.vertex_inline_max_bytes:
            data = base64.b64encode(build_mp4(self.video_size)).decode()
            videos = [{"bytesBase64Encoded": data, "mimeType": "video/mp4"} for _ in op.file_ids]
        else:
            videos = [
                {"gcsUri": f"{base}/v1beta/files/{fid}:download?alt=media", "mimeType": "video/mp4"}
                for fid in op.file_ids
            ]
        return result | {"raiMediaFilteredCount": 0, "videos": videos}

    # -- counters for a test in another process ---------------------------------------------

    async def _stats(self, request: web.Request) -> web.Response:
        """`GET /_fake/stats`, read-only: the counters, armed faults, operations started."""
        operations = [
            {
                "name": op.name,
                "prompt": op.prompt,
                "startedAt": op.started_at,
                "polls": op.polls,
                "downloads": op.downloads,
            }
            for op in self.operations.values()
        ]
        counters = {
            "starts": self.starts,
            "polls": self.polls,
            "downloads": self.downloads,
            "rateLimited": self.rate_limited,
            "startTimes": self.start_times,
            "now": self.clock.now(),
        }
        return web.json_response(counters | {"faults": self.armed(), "operations": operations})

    async def _set_faults(self, request: web.Request) -> web.Response:
        """`POST /_fake/faults`: arm or disarm fault controls (see the module docstring)."""
        try:
            controls = _CONTROLS.decode(await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _google_error(400, f"bad fault controls: {exc}")
        self.apply(controls)
        return web.json_response({"faults": self.armed()})

    # -- download -------------------------------------------------------------------------

    async def _download(self, request: web.Request) -> web.StreamResponse:
        file_id, _, method = request.match_info["action"].partition(":")
        denied = self._auth_failure(request, "any")
        if denied is not None:
            return denied
        if self._faults.downloads:
            return _failure_response(self._faults.downloads.popleft())
        op = self._files.get(file_id)
        if method != "download" or op is None:
            return _google_error(404, f"File {file_id} not found.")
        if self.redirect_downloads_to:
            raise web.HTTPFound(self.redirect_downloads_to)
        op.downloads += 1
        return await self._stream_video(request)

    async def _media(self, request: web.Request) -> web.StreamResponse:
        """An unauthenticated storage URL (what the real download redirects to)."""
        return await self._stream_video(request)

    async def _stream_video(self, request: web.Request) -> web.StreamResponse:
        self.downloads += 1
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = self.video_size
        await response.prepare(request)
        cut = self.cut_download or self.cut_downloads_left > 0
        self.cut_downloads_left = max(0, self.cut_downloads_left - 1)
        limit = self.video_size // 2 if cut else self.video_size
        sent = 0
        for chunk in iter_mp4(self.video_size):
            chunk = chunk[: limit - sent]
            await response.write(chunk)
            sent += len(chunk)
            if sent >= limit:
                break
        if cut and request.transport is not None:
            request.transport.abort()  # half the body, then the connection drops;
            raise asyncio.CancelledError  # aiohttp treats it as a client that went away
        await response.write_eof()
        return response


class FakeVeoServer:
    """`async with FakeVeoServer(port=0, **options) as fake:` a FakeVeo served on loopback."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Any):
        self.host, self.port = host, port
        self.veo = FakeVeo(**options)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return self.veo.base_url

    async def __aenter__(self) -> FakeVeo:
        runner = web.AppRunner(
            self.veo.app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        self._runner = runner
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await self.__aexit__()
            raise
        port = runner.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.veo.base_url = f"http://{host}:{port}"
        return self.veo

    async def __aexit__(self, *exc_info: object) -> None:
        self.veo.release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def serve_fake_veo(host: str, port: int, **options: Any) -> None:
    """Serve a FakeVeo until SIGINT or SIGTERM (`python main.py fake-veo --port N`)."""
    asyncio.run(_serve_forever(host, port, options))


async def _serve_forever(host: str, port: int, options: dict[str, Any]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with FakeVeoServer(host, port, **options) as fake:
        print(f"fake Veo listening on {fake.base_url}", flush=True)
        await stop.wait()
