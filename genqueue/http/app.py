"""The HTTP API: `create_app(config)` and the routes of DESIGN.md "Public contract".

The queue (and, unless one is passed in, the generation service) starts in a
`cleanup_ctx` and stops after the server; handlers reach it through `web.AppKey`s
and only ever await it (the `a*` methods), so no handler blocks the loop on an
actor. Errors leave as `{"error": {"code", "message", "field"?}}` (see errors.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from genqueue import (
    DEAD_CURSOR,
    DELIVERY_ID,
    JOB_ID,
    NAME_PATTERN,
    Clock,
    Config,
    DeliveryNotDead,
    DeliveryNotFound,
    Job,
    JobNotFound,
    JobQueue,
    JobStatus,
    Processor,
    veo_processor,
)
from genqueue.http.auth import ApiKeys, Caller
from genqueue.http.body import parse_body, require_json
from genqueue.http.dashboard import add_dashboard
from genqueue.http.errors import ApiError, error_middleware
from genqueue.http.limits import StreamLimit, body_deadline
from genqueue.http.metrics import CONTENT_TYPE, Metrics
from genqueue.http.openapi import build_openapi
from genqueue.http.sse import JobEvents, stream_job
from genqueue.wire import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    STATUSES,
    DeliveryPage,
    JobPage,
    encode,
    public_delivery,
    public_job,
)

__all__ = ["EVENTS", "MAX_BODY_BYTES", "QUEUE", "create_app"]

log = logging.getLogger("genqueue.http")

# A submission may carry up to 10 MiB of images (genqueue.models.MAX_IMAGES_BYTES) as
# base64 (4/3 of that) in JSON: 16 MiB holds them with room for the rest.
MAX_BODY_BYTES = 16 * 1024 * 1024
QUEUE = web.AppKey("queue", JobQueue)
EVENTS = web.AppKey("events", JobEvents)
KEYS = web.AppKey("api_keys", ApiKeys)
METRICS = web.AppKey("metrics", Metrics)
OPENAPI = web.AppKey("openapi", bytes)
VIDEO_ROOT = web.AppKey("video_root", Path)
STREAMS = web.AppKey("streams", StreamLimit)

_CURSOR = re.compile(r"[0-9]{16}")
_LIMIT = re.compile(r"[0-9]{1,3}")
_SEGMENT = re.compile(NAME_PATTERN)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

routes = web.RouteTableDef()


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
    app.cleanup_ctx.append(_lifecycle(config, processor, clock))
    app.on_shutdown.append(_end_streams)
    app.add_routes(routes)
    add_dashboard(app, authenticate=_caller, queue=QUEUE, events=EVENTS, streams=STREAMS)
    return app


def _lifecycle(
    config: Config, processor: Processor | None, clock: Clock | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            proc = processor
            coordinator = None
            if proc is None and config.dispatch == "sqs":
                from genqueue.cluster.coordinator import Coordinator

                coordinator = Coordinator(config, clock=clock)
                await coordinator.start()
                stack.push_async_callback(coordinator.close)
                proc = coordinator
            if proc is None:
                service = veo_processor(config, clock=clock)
                await service.start()
                stack.push_async_callback(service.close)
                proc = service
            queue = JobQueue(config, proc, clock=clock, loop=loop)
            # open/close wait on actor threads, which may need this loop: not on it.
            await asyncio.to_thread(queue.open)
            stack.push_async_callback(asyncio.to_thread, queue.close)
            if coordinator is not None:  # events wait in SQS until the queue is open
                from genqueue.cluster.consumer import EventsConsumer

                consumer = EventsConsumer(coordinator, queue)
                stack.callback(consumer.close)
                consumer.start()
                stack.push_async_callback(coordinator.stop_tasks)
            healer = asyncio.create_task(_heal_store(queue, config))
            stack.push_async_callback(_cancel, healer)
            events = JobEvents(loop)
            stack.callback(queue.subscribe(events.publish))
            app[QUEUE] = queue
            app[EVENTS] = events
            yield

    return lifecycle


async def _heal_store(queue: JobQueue, config: Config) -> None:
    """While the state store is failed (a full or read-only disk), look every
    `store_retry_s` whether the data directory takes writes again; then reopen the queue
    from disk, as a restart would. Requests meanwhile get 503."""
    while True:
        await asyncio.sleep(config.store_retry_s)
        if not queue.unavailable:
            continue
        if not await asyncio.to_thread(_takes_writes, config.data_path):
            continue
        try:
            await asyncio.to_thread(queue.reopen)
        except Exception as exc:
            log.warning("the state store is still unavailable", extra={"error": repr(exc)})
        else:
            log.warning("the state store takes writes again: the queue was reopened from disk")


def _takes_writes(folder: Path) -> bool:
    """Whether `folder` takes a small durable write (a probe file, removed after)."""
    probe = folder / ".genqueue-write-probe"
    try:
        with probe.open("wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError:
        with contextlib.suppress(OSError):
            probe.unlink()
        return False
    return True


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


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


# -- helpers ----------------------------------------------------------------------------------


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=encode(body), status=status, content_type="application/json", headers=headers
    )


def _caller(request: web.Request) -> Caller:
    return request.app[KEYS].authenticate(request.headers.get("Authorization"))


def _not_found() -> ApiError:
    return ApiError(404, "no such job")


async def _visible(request: web.Request, caller: Caller) -> Job:
    """The path's job as it is now, if the caller may see it; else a 404."""
    job_id = request.match_info["id"]
    if not JOB_ID.fullmatch(job_id):
        raise _not_found()
    try:
        job = await request.app[QUEUE].aget(job_id)
    except JobNotFound:
        raise _not_found() from None
    if not caller.may_see(job.user_id):
        raise _not_found()
    return job


# -- jobs -------------------------------------------------------------------------------------


@routes.post("/api/generations")
async def submit(request: web.Request) -> web.Response:
    caller = _caller(request)
    require_json(request)
    req = parse_body(await request.read())
    if caller.max_priority is not None and req.priority > caller.max_priority:
        raise ApiError(
            400,
            f"priority {req.priority} is above this key's maximum, {caller.max_priority}",
            field="priority",
        )
    job, created = await request.app[QUEUE].asubmit(req, user_id=caller.user_id)
    if not created and not caller.may_see(job.user_id):
        raise ApiError(409, "this id is already taken", code="id_conflict", field="id")
    location = {"Location": f"/api/generations/{job.id}"}
    return _json(public_job(job), 202 if created else 200, location)


@routes.get("/api/generations/{id}")
async def get_job(request: web.Request) -> web.Response:
    return _json(public_job(await _visible(request, _caller(request))))


@routes.delete("/api/generations/{id}")
async def cancel_job(request: web.Request) -> web.Response:
    job = await _visible(request, _caller(request))
    if job.terminal:
        raise ApiError(409, f"job {job.id} has already {job.status}", code="job_finished")
    job = await request.app[QUEUE].acancel(job.id)
    return _json(public_job(job), 200 if job.terminal else 202)


@routes.get("/api/generations/{id}/events")
async def job_events(request: web.Request) -> web.StreamResponse:
    caller = _caller(request)
    with request.app[STREAMS].hold(caller, request):
        return await stream_job(request, request.app[EVENTS], lambda: _visible(request, caller))


@routes.get("/api/generations")
async def list_jobs(request: web.Request) -> web.Response:
    caller = _caller(request)
    limit, statuses, cursor = _list_query(request)
    user_id = None if caller.admin else caller.user_id
    page = await request.app[QUEUE].alist_jobs(user_id, statuses, limit, cursor)
    return _json(JobPage([public_job(job) for job in page.items], page.next_cursor))


def _list_query(request: web.Request) -> tuple[int, frozenset[JobStatus] | None, str | None]:
    query = request.query
    raw_limit = query.get("limit", str(DEFAULT_LIMIT))
    if not _LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise ApiError(400, f"limit must be an integer from 1 to {MAX_LIMIT}", field="limit")
    statuses: frozenset[JobStatus] | None = None
    if query.get("status"):
        asked = query["status"].split(",")  # exactly as the document says
        statuses = frozenset(s for s in STATUSES if s in asked)
        if len(statuses) != len(set(asked)):
            raise ApiError(400, "status must be among " + ", ".join(STATUSES), field="status")
    cursor = query.get("cursor")
    if cursor is not None and not _CURSOR.fullmatch(cursor):
        raise ApiError(400, "cursor must be a nextCursor this API returned", field="cursor")
    return int(raw_limit), statuses, cursor


# -- the queue, health, metrics, the document ----------------------------------------------------


@routes.get("/api/providers")
async def providers(request: web.Request) -> web.Response:
    _caller(request)
    return _json(request.app[QUEUE].providers())


@routes.get("/api/queue/status")
async def queue_status(request: web.Request) -> web.Response:
    _caller(request)
    return _json(await request.app[QUEUE].astatus())


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    status = await request.app[QUEUE].astatus()
    body = request.app[METRICS].render(status)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    if not await request.app[QUEUE].ahealthy():
        raise ApiError(503, "the state store has failed", code="storage_unavailable")
    return _json({"status": "ok"})


@routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


# -- webhooks (admin only) ------------------------------------------------------------------------


def _admin(request: web.Request) -> None:
    if not _caller(request).admin:
        raise ApiError(403, "this route needs an admin API key")


@routes.get("/api/webhooks/dead")
async def dead_webhooks(request: web.Request) -> web.Response:
    _admin(request)
    raw_limit = request.query.get("limit", str(DEFAULT_LIMIT))
    if not _LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise ApiError(400, f"limit must be an integer from 1 to {MAX_LIMIT}", field="limit")
    cursor = request.query.get("cursor")
    if cursor is not None and not DEAD_CURSOR.fullmatch(cursor):
        raise ApiError(400, "cursor must be a nextCursor this API returned", field="cursor")
    page = await request.app[QUEUE].webhooks.adead(int(raw_limit), cursor)
    items = [public_delivery(d) for d in page.deliveries]
    return _json(DeliveryPage(items, page.next_after))


@routes.post("/api/webhooks/{deliveryId}/replay")
async def replay_webhook(request: web.Request) -> web.Response:
    _admin(request)
    delivery_id = request.match_info["deliveryId"]
    try:
        if not DELIVERY_ID.fullmatch(delivery_id):
            raise DeliveryNotFound(delivery_id)
        delivery = await request.app[QUEUE].webhooks.areplay(delivery_id)
    except DeliveryNotFound:
        raise ApiError(404, "no dead-lettered or pending webhook delivery has this id") from None
    except DeliveryNotDead:
        raise ApiError(409, "this delivery is pending, not dead-lettered") from None
    return _json(public_delivery(delivery), 202)


# -- local videos -------------------------------------------------------------------------------


@routes.get("/videos/{user}/{name}")
async def video(request: web.Request) -> web.StreamResponse:
    """A stored `.mp4` under the video folder, at a signed, unexpired URL only (the job's
    `videoUrl`, signed afresh on each read); no dot-files, no way out of the folder."""
    user, name = request.match_info["user"], request.match_info["name"]
    if not (_SEGMENT.fullmatch(user) and _SEGMENT.fullmatch(name) and name.endswith(".mp4")):
        raise ApiError(404, "no such video")
    query = request.query
    signed = request.app[QUEUE].video_url_valid(
        f"/videos/{user}/{name}", query.get("expires"), query.get("signature")
    )
    if not signed:  # checked first: an unsigned request learns nothing, not even existence
        raise ApiError(
            403,
            "this video URL is unsigned, expired or altered: read the job again for a fresh one",
        )
    root = request.app[VIDEO_ROOT]
    path = await asyncio.to_thread(_inside, root, root / user / name)
    if path is None:
        raise ApiError(404, "no such video")
    headers = {
        "Content-Type": "video/mp4",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store",  # the URL expires; so does any copy
        "Referrer-Policy": "no-referrer",
    }
    return web.FileResponse(path, headers=headers)


def _inside(root: Path, path: Path) -> Path | None:
    """`path` resolved, if it is a regular file inside `root` (symlinks included)."""
    try:
        resolved = path.resolve(strict=True)
        inside = resolved.is_relative_to(root.resolve(strict=True)) and resolved.is_file()
    except OSError:
        return None
    return resolved if inside else None
