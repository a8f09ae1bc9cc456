"""A fake of fal.ai's queue API (queue.fal.run) on aiohttp, for tests and demos.

It serves the routes fal-client follows (submit, status, result, cancel) for the pinned
models of genqueue.providers.fake_fal.shapes, checks `Authorization: Key …`, and serves each
finished request's video at `/files/{id}.mp4` (fal's CDN, no key). It counts what a real
account would be billed for: `paid_starts` (accepted submissions), per model.

A request's first `queue_polls` status reads answer IN_QUEUE, the next `progress_polls`
IN_PROGRESS, and later ones COMPLETED once `latency_s` has passed since its submission. A prompt
containing "BLOCKME" completes with fal's content-policy error; `fail_next_submits` answers
that many submissions with 429 (nothing queued, nothing charged).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from genqueue.providers.fake_fal.shapes import INPUTS, Veo31Input
from genqueue.providers.fake_veo.video import iter_mp4

__all__ = ["FakeFal", "FalRequest"]

VIDEO_SIZE = 256 * 1024


@dataclass
class FalRequest:
    request_id: str
    model: str
    input: Veo31Input
    created: float
    cancelled: bool = False
    status_reads: int = 0
    result_reads: int = 0


@dataclass
class FakeFal:
    key: str = "fal-test-key"
    latency_s: float = 0.0  # seconds from submission to COMPLETED (at least)
    queue_polls: int = 0  # status reads answered IN_QUEUE first, then IN_PROGRESS ones
    progress_polls: int = 0
    base_url: str = ""
    fail_next_submits: int = 0
    hold: bool = False  # while set, every request stays IN_PROGRESS (POST /_fake/control)
    requests: dict[str, FalRequest] = field(default_factory=dict)
    paid_starts: Counter[str] = field(default_factory=Counter)
    cancels: int = 0
    downloads: int = 0

    def __post_init__(self) -> None:
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/_fake/state", self._fake_state),
                web.post("/_fake/control", self._fake_control),
                web.get("/files/{rid}.mp4", self._file),
                web.get("/{owner}/{alias}/requests/{rid}/status", self._status),
                web.put("/{owner}/{alias}/requests/{rid}/cancel", self._cancel),
                web.get("/{owner}/{alias}/requests/{rid}", self._result),
                web.post("/{owner}/{alias}", self._submit),
                web.post("/{owner}/{alias}/{path:.+}", self._submit),
            ]
        )

    def release(self) -> None:
        """Nothing to release (kept for the symmetry with FakeVeo)."""

    def _denied(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Key {self.key}":
            return web.json_response({"detail": "Invalid API key"}, status=401)
        return None

    def _base(self, request: web.Request) -> str:
        return self.base_url or f"{request.scheme}://{request.host}"

    def _urls(self, request: web.Request, req: FalRequest) -> dict[str, str]:
        app = "/".join(req.model.split("/")[:2])
        url = f"{self._base(request)}/{app}/requests/{req.request_id}"
        return {"response_url": url, "status_url": f"{url}/status", "cancel_url": f"{url}/cancel"}

    async def _submit(self, request: web.Request) -> web.Response:
        denied = self._denied(request)
        if denied is not None:
            return denied
        info = request.match_info
        model = f"{info['owner']}/{info['alias']}" + (f"/{info['path']}" if "path" in info else "")
        shape = INPUTS.get(model)
        if shape is None:
            return web.json_response({"detail": f"Application {model!r} not found"}, status=404)
        if self.fail_next_submits > 0:
            self.fail_next_submits -= 1
            return web.json_response(
                {"detail": "Too many requests"}, status=429, headers={"Retry-After": "1"}
            )
        try:
            body = msgspec.json.decode(await request.read(), type=shape)
        except msgspec.ValidationError as exc:
            return _unprocessable(str(exc))
        except msgspec.DecodeError:
            return web.json_response({"detail": "body is not JSON"}, status=400)
        req = FalRequest(uuid.uuid4().hex, model, body, time.monotonic())
        self.requests[req.request_id] = req
        self.paid_starts[model] += 1
        return web.json_response(
            {"request_id": req.request_id, **self._urls(request, req), "queue_position": 0}
        )

    def _allowed_request(self, request: web.Request) -> FalRequest | web.Response:
        """The path's request, or the answer fal gives instead (401 bad key, 404 unknown)."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        req = self._find(request)
        if req is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        return req

    def _find(self, request: web.Request) -> FalRequest | None:
        req = self.requests.get(request.match_info["rid"])
        app = f"{request.match_info['owner']}/{request.match_info['alias']}"
        if req is None or "/".join(req.model.split("/")[:2]) != app:
            return None
        return req

    def _state(self, req: FalRequest) -> str:
        """By status reads (deterministic for tests) and by time (for demos), both."""
        if req.cancelled:
            return "COMPLETED"
        if self.hold:
            return "IN_PROGRESS"
        n, queued = req.status_reads, self.queue_polls
        if n > queued + self.progress_polls:
            return (
                "COMPLETED" if time.monotonic() - req.created >= self.latency_s else "IN_PROGRESS"
            )
        return "IN_QUEUE" if 0 < n <= queued else "IN_PROGRESS"

    async def _status(self, request: web.Request) -> web.Response:
        req = self._allowed_request(request)
        if isinstance(req, web.Response):
            return req
        req.status_reads += 1
        state = self._state(req)
        body: dict[str, Any] = {"status": state, "request_id": req.request_id}
        body.update(self._urls(request, req))
        if state == "IN_QUEUE":
            body["queue_position"] = 0
        else:
            body["logs"] = [] if request.query.get("logs") in ("1", "true") else None
        if state == "COMPLETED":
            body["metrics"] = {"inference_time": round(time.monotonic() - req.created, 3)}
            error = self._error(req)
            if error is not None:
                body["error"], body["error_type"] = error
        return web.json_response(body)

    def _error(self, req: FalRequest) -> tuple[str, str] | None:
        if req.cancelled:
            return "Request was cancelled", "request_cancelled"
        if "BLOCKME" in req.input.prompt:
            return (
                "The content could not be processed by the safety filter",
                "content_policy_violation",
            )
        return None

    async def _result(self, request: web.Request) -> web.Response:
        req = self._allowed_request(request)
        if isinstance(req, web.Response):
            return req
        if self._state(req) != "COMPLETED":
            return web.json_response({"detail": "Request is still in progress"}, status=400)
        req.result_reads += 1
        error = self._error(req)
        if error is not None:
            return _unprocessable(error[0], kind=error[1], loc=["body", "prompt"])
        return web.json_response(
            {
                "video": {
                    "url": f"{self._base(request)}/files/{req.request_id}.mp4",
                    "content_type": "video/mp4",
                    "file_name": "output.mp4",
                    "file_size": VIDEO_SIZE,
                }
            }
        )

    async def _cancel(self, request: web.Request) -> web.Response:
        req = self._allowed_request(request)
        if isinstance(req, web.Response):
            return req
        if self._state(req) == "COMPLETED":
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
        req.cancelled = True
        self.cancels += 1
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)

    async def _fake_state(self, request: web.Request) -> web.Response:
        """What a real account would show: paid starts per model, cancels, downloads."""
        return web.json_response(
            {
                "paidStarts": dict(self.paid_starts),
                "cancels": self.cancels,
                "downloads": self.downloads,
                "requests": [
                    {
                        "id": r.request_id,
                        "model": r.model,
                        "prompt": r.input.prompt,
                        "statusReads": r.status_reads,
                        "cancelled": r.cancelled,
                    }
                    for r in self.requests.values()
                ],
            }
        )

    async def _fake_control(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "hold" in body:
            self.hold = bool(body["hold"])
        if "failNextSubmits" in body:
            self.fail_next_submits = int(body["failNextSubmits"])
        return web.json_response({"hold": self.hold, "failNextSubmits": self.fail_next_submits})

    async def _file(self, request: web.Request) -> web.StreamResponse:
        req = self.requests.get(request.match_info["rid"])
        if req is None or self._state(req) != "COMPLETED" or self._error(req) is not None:
            return web.json_response({"detail": "Not found"}, status=404)
        self.downloads += 1
        resp = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        resp.content_length = VIDEO_SIZE
        await resp.prepare(request)
        for chunk in iter_mp4(VIDEO_SIZE):
            await resp.write(chunk)
        await resp.write_eof()
        return resp


def _unprocessable(
    msg: str, *, kind: str = "value_error", loc: list[str] | None = None
) -> web.Response:
    return web.json_response(
        {"detail": [{"loc": loc or ["body"], "msg": msg, "type": kind}]}, status=422
    )
