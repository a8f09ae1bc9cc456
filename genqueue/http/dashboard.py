"""The live dashboard: `GET /` (one static page) and its feed, `GET /api/events`.

The page (static/dashboard.html: inline CSS and JS, no build step, no external asset)
is read once when the app is built and served with a Content-Security-Policy that
allows exactly its own inline `<script>` and `<style>` (by SHA-256 hash), fetches to
this origin and videos; nothing else. It asks for an API key once, keeps it in
sessionStorage and sends it as `Authorization: Bearer`, so it reads the feed with
`fetch()` streaming rather than EventSource (which cannot send that header).

`GET /api/events` is the feed of everything the caller may see (an admin: every job;
a user: its own). With `Accept: text/event-stream` it is a Server-Sent Events stream:
`snapshot` first (the queue's figures and the newest jobs), then `job` on every change
of a visible job (changes that arrive together are coalesced, newest per job) and
`queue` every `QUEUE_EVERY_S` (which doubles as the keep-alive). It ends when the
server shuts down. Without that Accept header it answers the snapshot alone as JSON,
so a plain HTTP client (or a schema fuzzer) gets an answer that ends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
from collections.abc import Callable
from importlib import resources
from typing import Any

import msgspec
from aiohttp import web

from genqueue import Job, JobQueue, QueueStatus
from genqueue.http.auth import Caller
from genqueue.http.limits import StreamLimit
from genqueue.http.openapi_parts import ERRORS, PUBLIC, REF, TOO_MANY_STREAMS
from genqueue.http.sse import JobEvents, open_stream
from genqueue.wire import PublicJob, encode, public_job

__all__ = ["EventSnapshot", "Page", "add_dashboard", "dashboard_paths", "load_page"]

QUEUE_EVERY_S = 2.0  # a `queue` event this often; also keeps proxies from closing the stream
SNAPSHOT_JOBS = 25  # the newest jobs in a snapshot
_COALESCE_MAX = 500  # job changes folded into one write, at most

Authenticate = Callable[[web.Request], Caller]


class EventSnapshot(msgspec.Struct, rename="camel"):
    """What `GET /api/events` starts with: the queue's figures and the newest visible jobs."""

    queue: QueueStatus
    jobs: list[PublicJob]


class Page(msgspec.Struct, frozen=True):
    """The dashboard's HTML and the Content-Security-Policy that lets exactly it run."""

    html: bytes
    csp: str


_INLINE = {
    "script": re.compile(rb"<script>(.*?)</script>", re.DOTALL),
    "style": re.compile(rb"<style>(.*?)</style>", re.DOTALL),
}


def load_page(name: str = "dashboard.html") -> Page:
    """Read the page from the package and hash its one inline script and one inline style."""
    html = resources.files("genqueue.http").joinpath("static", name).read_bytes()
    hashes = {}
    for kind, pattern in _INLINE.items():
        blocks = pattern.findall(html)
        if len(blocks) != 1:
            raise RuntimeError(f"{name} must hold exactly one inline <{kind}>, not {len(blocks)}")
        hashes[kind] = "'sha256-" + base64.b64encode(hashlib.sha256(blocks[0]).digest()).decode()
        hashes[kind] += "'"
    csp = "; ".join(
        [
            "default-src 'none'",
            f"script-src {hashes['script']}",
            f"style-src {hashes['style']}",
            "connect-src 'self'",
            # Finished videos: this server's /videos/, or a bucket's public / presigned URL.
            "media-src 'self' https: http:",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",  # the forms are JS-only: never put a key in a URL
            "frame-ancestors 'none'",
        ]
    )
    return Page(html, csp)


PAGE = web.AppKey("dashboard_page", Page)


def add_dashboard(
    app: web.Application,
    *,
    authenticate: Authenticate,
    queue: web.AppKey[JobQueue],
    events: web.AppKey[JobEvents],
    streams: web.AppKey[StreamLimit],
) -> None:
    """Add `GET /` and `GET /api/events` to `app` (the page is read now, once)."""
    app[PAGE] = load_page()

    async def index(request: web.Request) -> web.Response:
        dashboard = request.app[PAGE]
        return web.Response(
            body=dashboard.html,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Content-Security-Policy": dashboard.csp,
                "Cache-Control": "no-cache",
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
                "X-Frame-Options": "DENY",
            },
        )

    async def snapshot(request: web.Request, caller: Caller) -> EventSnapshot:
        jobs = request.app[queue]
        user_id = None if caller.admin else caller.user_id
        recent = await jobs.alist_jobs(user_id, limit=SNAPSHOT_JOBS)
        return EventSnapshot(await jobs.astatus(), [public_job(job) for job in recent.items])

    async def feed(request: web.Request) -> web.StreamResponse:
        caller = authenticate(request)
        if "text/event-stream" not in request.headers.get("Accept", "").lower():
            first = await snapshot(request, caller)
            return web.Response(body=encode(first), content_type="application/json")
        with (
            request.app[streams].hold(caller, request),
            request.app[events].listen(None) as changes,
        ):
            first = await snapshot(request, caller)  # after listening: no change slips by
            response = await open_stream(request)
            try:
                await response.write(_frame("snapshot", encode(first)))
                await _stream(response, request.app[queue], caller, changes)
                await response.write_eof()
            except ConnectionError:
                pass  # the client went away
            return response

    app.router.add_get("/", index)
    app.router.add_get("/api/events", feed)


def _frame(event: str, data: bytes) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (event.encode(), data)


async def _stream(
    response: web.StreamResponse,
    jobs: JobQueue,
    caller: Caller,
    changes: asyncio.Queue[Job | None],
) -> None:
    loop = asyncio.get_running_loop()
    next_status = loop.time() + QUEUE_EVERY_S
    while True:
        try:
            first = await asyncio.wait_for(changes.get(), max(0.0, next_status - loop.time()))
        except TimeoutError:
            await response.write(_frame("queue", encode(await jobs.astatus())))
            next_status = loop.time() + QUEUE_EVERY_S
            continue
        batch = [first]
        with contextlib.suppress(asyncio.QueueEmpty):
            while len(batch) < _COALESCE_MAX:
                batch.append(changes.get_nowait())
        newest: dict[str, Job] = {}
        for job in batch:
            if job is None:
                return  # the server is shutting down
            if caller.may_see(job.user_id):
                seen = newest.get(job.id)
                if seen is None or job.updated_at >= seen.updated_at:
                    newest[job.id] = job
        if newest:
            await response.write(
                b"".join(_frame("job", encode(public_job(j))) for j in newest.values())
            )


# -- its part of the OpenAPI document --------------------------------------------------


def _feed_event(event: str, schema: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": event},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": REF + schema},
            },
        },
    }


def dashboard_paths() -> dict[str, Any]:
    """`GET /` (the live dashboard) and its feed `GET /api/events` (see dashboard.py)."""
    return {
        "/": {
            "get": {
                **PUBLIC,
                "operationId": "dashboard",
                "summary": "The live dashboard: one HTML page (it asks for an API key).",
                "responses": {
                    "200": {
                        "description": "The page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "default": ERRORS["default"],
                },
            }
        },
        "/api/events": {
            "get": {
                "operationId": "events",
                "summary": "Every change the caller may see (an admin: all jobs; a user: "
                "its own) and the queue's figures.",
                "description": "With `Accept: text/event-stream`, Server-Sent Events: "
                "`snapshot` first (the queue's figures and the newest jobs), then `job` "
                "with the whole job on each change (changes arriving together are "
                f"coalesced, newest per job) and `queue` every {QUEUE_EVERY_S:g} s; the "
                "stream ends only when the server stops. Without that Accept header: the "
                "snapshot alone, as JSON.",
                "responses": {
                    "200": {
                        "description": "The snapshot, or the event stream.",
                        "content": {
                            "application/json": {"schema": {"$ref": REF + "EventSnapshot"}},
                            "text/event-stream": {
                                "schema": {
                                    "oneOf": [
                                        _feed_event("snapshot", "EventSnapshot"),
                                        _feed_event("job", "Job"),
                                        _feed_event("queue", "QueueStatus"),
                                    ]
                                }
                            },
                        },
                    },
                    "429": TOO_MANY_STREAMS,
                    **ERRORS,
                },
            }
        },
    }
