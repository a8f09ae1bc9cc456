"""The job routes: submit, read, cancel, follow (SSE) and list `/api/generations`.

A caller sees only its own jobs (an admin key: everyone's); a job it may not see is a
404, exactly as one that does not exist.
"""

from __future__ import annotations

import re

from aiohttp import web

from genqueue import JOB_ID, NAME_PATTERN, Job, JobNotFound, JobStatus
from genqueue.http.auth import Caller
from genqueue.http.body import parse_body, require_json
from genqueue.http.context import (
    EVENTS,
    QUEUE,
    STREAMS,
    caller,
    json_response,
    query_cursor,
    query_limit,
)
from genqueue.http.errors import ApiError
from genqueue.http.sse import stream_job
from genqueue.wire import STATUSES, JobPage, public_job

__all__ = ["routes"]

routes = web.RouteTableDef()

_CURSOR = re.compile(r"[0-9]{16}")
_USER_ID = re.compile(NAME_PATTERN)


@routes.post("/api/generations")
async def submit(request: web.Request) -> web.Response:
    who = caller(request)
    require_json(request)
    req = parse_body(await request.read())
    if who.max_priority is not None and req.priority > who.max_priority:
        raise ApiError(
            400,
            f"priority {req.priority} is above this key's maximum, {who.max_priority}",
            field="priority",
        )
    job, created = await request.app[QUEUE].asubmit(req, user_id=who.user_id)
    if not created and not who.may_see(job.user_id):
        raise ApiError(409, "this id is already taken", code="id_conflict", field="id")
    location = {"Location": f"/api/generations/{job.id}"}
    return json_response(public_job(job), 202 if created else 200, location)


@routes.get("/api/generations/{id}")
async def get_job(request: web.Request) -> web.Response:
    return json_response(public_job(await _visible(request, caller(request))))


@routes.delete("/api/generations/{id}")
async def cancel_job(request: web.Request) -> web.Response:
    job = await _visible(request, caller(request))
    if job.terminal:
        raise ApiError(409, f"job {job.id} has already {job.status}", code="job_finished")
    job = await request.app[QUEUE].acancel(job.id)
    return json_response(public_job(job), 200 if job.terminal else 202)


@routes.get("/api/generations/{id}/events")
async def job_events(request: web.Request) -> web.StreamResponse:
    who = caller(request)
    with request.app[STREAMS].hold(who, request):
        return await stream_job(request, request.app[EVENTS], lambda: _visible(request, who))


@routes.get("/api/generations")
async def list_jobs(request: web.Request) -> web.Response:
    who = caller(request)
    limit = query_limit(request)
    statuses = _statuses(request)
    cursor = query_cursor(request, _CURSOR)
    page = await request.app[QUEUE].alist_jobs(_lister(request, who), statuses, limit, cursor)
    return json_response(JobPage([public_job(job) for job in page.items], page.next_cursor))


def _lister(request: web.Request, who: Caller) -> str | None:
    """Whose jobs to list: the caller's; an admin's `userId` (or everyone's without it)."""
    asked = request.query.get("userId")
    if asked is None:
        return None if who.admin else who.user_id
    if not _USER_ID.fullmatch(asked):
        raise ApiError(400, f"userId must match {NAME_PATTERN}", field="userId")
    if not who.admin and asked != who.user_id:
        raise ApiError(403, "only an admin API key lists another user's jobs", field="userId")
    return asked


def _statuses(request: web.Request) -> frozenset[JobStatus] | None:
    if not request.query.get("status"):
        return None
    asked = request.query["status"].split(",")  # exactly as the document says
    statuses = frozenset(s for s in STATUSES if s in asked)
    if len(statuses) != len(set(asked)):
        raise ApiError(400, "status must be among " + ", ".join(STATUSES), field="status")
    return statuses


async def _visible(request: web.Request, who: Caller) -> Job:
    """The path's job as it is now, if the caller may see it; else a 404."""
    job_id = request.match_info["id"]
    if not JOB_ID.fullmatch(job_id):
        raise _not_found()
    try:
        job = await request.app[QUEUE].aget(job_id)
    except JobNotFound:
        raise _not_found() from None
    if not who.may_see(job.user_id):
        raise _not_found()
    return job


def _not_found() -> ApiError:
    return ApiError(404, "no such job")
