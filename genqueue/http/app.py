"""The HTTP API: `create_app(config)` puts together the routes of DESIGN.md "Public contract".

The queue (and, unless one is passed in, the generation service) starts in a
`cleanup_ctx` (lifecycle.py) and stops after the server; handlers reach it through
`web.AppKey`s (context.py) and only ever await it (the `a*` methods), so no handler blocks
the loop on an actor. The routes: jobs.py (`/api/generations`), status.py (providers, the
queue, health, metrics, the document), admin.py (the webhook outbox), videos.py (local
videos), dashboard.py (`/`, `/api/events`). Errors leave as `{"error": {"code", "message",
"field"?}}` (see errors.py).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from genqueue import Clock, Config, Processor
from genqueue.http import admin, jobs, status, videos
from genqueue.http.auth import ApiKeys
from genqueue.http.context import (
    EVENTS,
    KEYS,
    METRICS,
    OPENAPI,
    QUEUE,
    STREAMS,
    VIDEO_ROOT,
    caller,
)
from genqueue.http.dashboard import add_dashboard
from genqueue.http.errors import error_middleware
from genqueue.http.lifecycle import lifecycle
from genqueue.http.limits import StreamLimit, body_deadline
from genqueue.http.metrics import Metrics
from genqueue.http.openapi import build_openapi
from genqueue.wire import encode

__all__ = ["EVENTS", "MAX_BODY_BYTES", "QUEUE", "STREAMS", "create_app"]

# A submission may carry up to 10 MiB of images (genqueue.models.MAX_IMAGES_BYTES) as
# base64 (4/3 of that) in JSON: 16 MiB holds them with room for the rest.
MAX_BODY_BYTES = 16 * 1024 * 1024
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def create_app(
    config: Config,
    *,
    processor: Processor | None = None,
    clock: Clock | None = None,
    video_root: Path | None = None,
) -> web.Application:
    """The aiohttp application; the queue opens on startup and closes on cleanup."""
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[_count_responses, error_middleware, body_deadline(config.body_timeout_s)],
    )
    app[KEYS] = ApiKeys.parse(config.api_keys)
    app[STREAMS] = StreamLimit(config.max_streams_per_key)
    app[METRICS] = Metrics()
    app[OPENAPI] = encode(build_openapi(config=config))
    app[VIDEO_ROOT] = video_root if video_root is not None else config.data_path / "videos"
    app.cleanup_ctx.append(lifecycle(config, processor, clock))
    app.on_shutdown.append(_end_streams)
    for group in (jobs, status, admin, videos):
        app.add_routes(group.routes)
    add_dashboard(app, authenticate=caller, queue=QUEUE, events=EVENTS, streams=STREAMS)
    return app


async def _end_streams(app: web.Application) -> None:
    events = app.get(EVENTS)
    if events is not None:
        events.close()


@web.middleware
async def _count_responses(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    method = request.method if request.method in _METHODS else "other"  # bounded labels
    request.app[METRICS].http_responses.labels(method, route, response.status).inc()
    return response
