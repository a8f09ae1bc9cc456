"""FakeVeo: the fake's state and its aiohttp application (routes in `doors.py`'s docstring).

Operations finish `latency_s` after they start, in the time of an injected clock. Prompt
markers: "[unsafe]" → the video is filtered (`raiMediaFilteredReasons`), "[blocked-prompt]"
→ the prompt is refused (Vertex: a finished operation with `error.code` 3 and a support
code; Gemini: `raiMediaFilteredReasons`), "[audio-block]" → the audio filter blocks ("You
have not been charged"), "[op-error:N]" → the operation fails with gRPC code N,
"[bad-request]" → 400. A test in another process reads and steers the fake over HTTP:
`GET /_fake/stats` (counters, armed faults, operations) and `POST /_fake/faults` (see
faults.py).
"""

from __future__ import annotations

import collections
import math
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import msgspec
from aiohttp import web

from genqueue.clock import RealClock
from genqueue.providers.fake_veo import doors
from genqueue.providers.fake_veo.auth import Credentials
from genqueue.providers.fake_veo.faults import Failure, FakeVeoControls, FaultControls
from genqueue.providers.fake_veo.google_errors import google_error, quota_error
from genqueue.providers.fake_veo.media import MediaRoutes
from genqueue.providers.fake_veo.oauth import TokenIssuer
from genqueue.providers.fake_veo.operations import OpInfo, RecordedRequest, outcome_of, poll_body
from genqueue.providers.fake_veo.video import MIN_VIDEO_SIZE, iter_mp4

__all__ = ["FakeVeo"]

_CONTROLS = msgspec.json.Decoder(FaultControls)
_VERTEX_MODEL = "/{version:v1|v1beta1}/projects/{project}/locations/{location}/publishers/google"
_EXPRESS_MODEL = "/{version:v1|v1beta1}/publishers/google"
_DAY_S = 86_400


class _Clock(Protocol):
    def now(self) -> float: ...


class FakeVeo(FakeVeoControls):
    """The fake's state, counters and fault controls; `app` is its aiohttp application."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        access_token: str | None = None,
        vertex_api_key: str | None = None,
        token_issuer: TokenIssuer | None = None,
        latency_s: float = 0.0,
        clock: _Clock | None = None,
        video_size: int = 256 * 1024,
        models: Iterable[str] | Mapping[str, Iterable[str]] = doors.KNOWN_MODELS,
        rate_limit_per_minute: int = 0,
        requests_per_day: int = 0,
        vertex_inline_max_bytes: int = 1 << 20,
    ):
        FakeVeoControls.__init__(self)
        self.credentials = Credentials(api_key, access_token, vertex_api_key, token_issuer)
        self.token_issuer = token_issuer
        self.latency_s = latency_s
        self.clock: _Clock = clock or RealClock()
        self.video_size = video_size
        next(iter_mp4(video_size))  # fail now on an impossible size
        if isinstance(models, Mapping):
            self.models = {door: set(ids) for door, ids in models.items()}
        else:  # one list for both doors
            self.models = {door: set(models) for door in ("gemini", "vertex")}
        self.rate_limit_per_minute = rate_limit_per_minute
        self.requests_per_day = requests_per_day
        self.vertex_inline_max_bytes = vertex_inline_max_bytes
        self.base_url = ""
        self.safety_marker = "[unsafe]"
        self.bad_request_marker = "[bad-request]"
        self.redirect_downloads_to: str | None = None
        # Counters.
        self.starts = self.polls = self.downloads = self.rate_limited = 0
        self.start_times: list[float] = []
        self.operations: dict[str, OpInfo] = {}
        self.requests: collections.deque[RecordedRequest] = collections.deque(maxlen=10_000)
        self.last_start_body: dict[str, Any] | None = None
        self.files: dict[str, OpInfo] = {}
        self.gcs: dict[tuple[str, str], OpInfo] = {}
        self.media = MediaRoutes(self)
        self.app = self._build_app()

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
        app.add_routes(
            [
                web.get("/v1beta/models/{model}", self._gemini_model),
                web.post("/v1beta/models/{action}", self._gemini_start),
                web.get("/v1beta/models/{model}/operations/{op}", self._gemini_poll),
                web.post(_VERTEX_MODEL + "/models/{action}", self._vertex_call),
                web.post(_EXPRESS_MODEL + "/models/{action}", self._vertex_call),
                web.get(_EXPRESS_MODEL + "/models/{model}", self._vertex_model),
                web.get("/_fake/stats", self._stats),
                web.post("/_fake/faults", self._set_faults),
                *self.media.routes(),
            ]
        )
        if self.token_issuer is not None:
            app.router.add_post("/token", self.token_issuer.handle)
        return app

    # -- the model checks -------------------------------------------------------------------

    async def _gemini_model(self, request: web.Request) -> web.StreamResponse:
        denied = self.credentials.refuse(request, "gemini")
        if denied is not None:
            return denied
        model = request.match_info["model"]
        if model not in self.models.get("gemini", ()):
            return google_error(404, f"models/{model} is not found for API version v1beta.")
        return web.json_response(doors.gemini_model_resource(model))

    async def _vertex_model(self, request: web.Request) -> web.StreamResponse:
        door = "express" if "x-goog-api-key" in request.headers else "vertex"
        denied = self.credentials.refuse(request, door)
        if denied is not None:
            return denied
        model = request.match_info["model"]
        if model not in self.models.get("vertex", ()):
            return google_error(404, f"Publisher model publishers/google/models/{model} not found.")
        return web.json_response(doors.vertex_model_resource(model))

    # -- start ----------------------------------------------------------------------------

    async def _gemini_start(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["action"].partition(":")
        if method != "predictLongRunning":
            return google_error(404, f"Method {method!r} not found.")
        return await self._start(request, "gemini", model)

    async def _vertex_call(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["action"].partition(":")
        if method == "predictLongRunning":
            return await self._start(request, "vertex", model)
        if method == "fetchPredictOperation":
            return await self._vertex_poll(request, model)
        return google_error(404, f"Method {method!r} not found.")

    async def _gate(
        self,
        request: web.Request,
        dialect: str,
        hang: bool,
        faults: collections.deque[Failure],
        *,
        malformed: bool = True,
    ) -> web.StreamResponse | None:
        """Auth, then the injected faults in order; None lets the request through. A start
        (`malformed=False`) answers malformed JSON only after creating its operation."""
        door = dialect
        if dialect == "vertex" and "project" not in request.match_info:
            door = "express"
        denied = self.credentials.refuse(request, door)
        if denied is not None:
            return denied
        if hang:
            await self.wait_released()
            return google_error(503, "The service is shutting down.")
        if faults:
            return self.failure_response(faults.popleft(), dialect, request)
        if malformed and self.malformed_json_next:
            return self._malformed()
        return None

    def _malformed(self) -> web.Response:
        self.malformed_json_next = False
        return web.Response(text='{"name": "models/', content_type="application/json")

    def failure_response(
        self, failure: Failure, dialect: str, request: web.Request
    ) -> web.Response:
        if failure.html:
            text = f"<html><body><h1>{failure.status} Server Error</h1></body></html>"
            return web.Response(status=failure.status, text=text, content_type="text/html")
        if failure.status == 429 and failure.quota is not None:
            model = request.match_info.get("action", "").partition(":")[0]
            return quota_error(dialect, failure.quota, model, failure.retry_after_s)
        message = "Injected failure." if failure.status != 429 else "Resource has been exhausted."
        return google_error(
            failure.status, message, retry_after_s=failure.retry_after_s, reason=failure.reason
        )

    async def _start(self, request: web.Request, dialect: str, model: str) -> web.StreamResponse:
        gated = await self._gate(
            request, dialect, self.hang_starts, self.faults.starts, malformed=False
        )
        if gated is not None:
            return gated
        if model not in self.models.get(dialect, ()):
            info = request.match_info
            resource = f"publishers/google/models/{model}"
            if "project" in info:
                resource = f"projects/{info['project']}/locations/{info['location']}/{resource}"
            return google_error(404, doors.model_not_found(dialect, model, resource))
        try:
            body = await request.json()
            prompt = str(body["instances"][0]["prompt"])
            params = dict(body.get("parameters") or {})
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return google_error(400, "Invalid JSON payload received.")
        self.last_start_body = body
        refused = doors.check_parameters(params, dialect)
        if refused is None and self.bad_request_marker in prompt:
            refused = "Request contains an invalid argument."
        if refused is not None:
            return google_error(400, refused)
        limited = self._rate_limit(dialect, model)
        if limited is not None:
            return limited
        op = self._create_op(request, dialect, model, prompt, params)
        if self.malformed_json_next:  # Google accepted (and bills) it; the answer is lost
            return self._malformed()
        return web.json_response({"name": op.name})

    def _rate_limit(self, dialect: str, model: str) -> web.Response | None:
        now = self.clock.now()
        day = self.requests_per_day
        if day and sum(1 for t in self.start_times if t // _DAY_S == now // _DAY_S) >= day:
            self.rate_limited += 1
            return quota_error(dialect, "day", model, None)
        limit = self.rate_limit_per_minute
        recent = [t for t in self.start_times if t > now - 60]
        if not limit or len(recent) < limit:
            return None
        self.rate_limited += 1
        wait_s = max(1, math.ceil(recent[-limit] + 60 - now))
        return quota_error(dialect, "minute", model, wait_s)

    def _create_op(
        self, request: web.Request, dialect: str, model: str, prompt: str, params: dict[str, Any]
    ) -> OpInfo:
        op_id = str(uuid.uuid4()) if dialect == "vertex" else uuid.uuid4().hex[:12]
        info = request.match_info
        if dialect == "gemini":
            name = f"models/{model}/operations/{op_id}"
        elif "project" in info:
            name = (
                f"projects/{info['project']}/locations/{info['location']}"
                f"/publishers/google/models/{model}/operations/{op_id}"
            )
        else:
            name = f"publishers/google/models/{model}/operations/{op_id}"
        outcome, code = outcome_of(prompt, self.safety_marker, self.audio_blocks_left > 0)
        if outcome == "audio_blocked" and self.audio_blocks_left > 0:
            self.audio_blocks_left -= 1
        now = self.clock.now()
        count = int(params.get("sampleCount", 1))
        files = [uuid.uuid4().hex[:12] for _ in range(count)] if outcome == "success" else []
        op = OpInfo(
            name, model, dialect, prompt, params, now, now + self.latency_s, files, outcome, code
        )
        storage_uri = params.get("storageUri")
        if storage_uri and files:
            bucket, _, prefix = str(storage_uri).removeprefix("gs://").partition("/")
            prefix = prefix.strip("/")
            for i in range(count):
                obj = f"{prefix}/{op_id}/sample_{i}.mp4".lstrip("/")
                op.gcs_objects.append((bucket, obj))
                self.gcs[(bucket, obj)] = op
        self.operations[name] = op
        self.files.update(dict.fromkeys(files, op))
        self.starts += 1
        self.start_times.append(now)
        return op

    # -- poll -----------------------------------------------------------------------------

    async def _gemini_poll(self, request: web.Request) -> web.StreamResponse:
        gated = await self._gate(request, "gemini", self.hang_polls, self.faults.polls)
        if gated is not None:
            return gated
        info = request.match_info
        return self._answer_poll(request, f"models/{info['model']}/operations/{info['op']}")

    async def _vertex_poll(self, request: web.Request, model: str) -> web.StreamResponse:
        gated = await self._gate(request, "vertex", self.hang_polls, self.faults.polls)
        if gated is not None:
            return gated
        try:
            name = str((await request.json())["operationName"])
        except (ValueError, KeyError, TypeError):
            return google_error(400, "Invalid JSON payload received.")
        op = self.operations.get(name)
        if op is not None and (op.dialect != "vertex" or op.model != model):
            return google_error(400, f"Operation {name} does not belong to model {model}.")
        return self._answer_poll(request, name)

    def _answer_poll(self, request: web.Request, name: str) -> web.StreamResponse:
        self.polls += 1
        op = self.operations.get(name)
        if op is None:
            return google_error(404, f"Operation not found: {name}")
        op.polls += 1
        if self.clock.now() < op.done_at:
            return web.json_response({"name": op.name})
        base = f"{request.scheme}://{request.host}"
        body = poll_body(op, base, self.video_size, self.vertex_inline_max_bytes)
        return web.json_response(body)

    # -- counters and controls for a test in another process --------------------------------

    async def _stats(self, request: web.Request) -> web.Response:
        """`GET /_fake/stats`, read-only: the counters, armed faults, operations started."""
        operations = [
            {
                "name": op.name,
                "prompt": op.prompt,
                "startedAt": op.started_at,
                "polls": op.polls,
                "downloads": op.downloads,
                "outcome": op.outcome,
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
            "minVideoSize": MIN_VIDEO_SIZE,
        }
        return web.json_response(counters | {"faults": self.armed(), "operations": operations})

    async def _set_faults(self, request: web.Request) -> web.Response:
        """`POST /_fake/faults`: arm or disarm fault controls (see faults.py)."""
        try:
            controls = _CONTROLS.decode(await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return google_error(400, f"bad fault controls: {exc}")
        self.apply(controls)
        return web.json_response({"faults": self.armed()})
