"""What every route reaches: the app's shared objects (`web.AppKey`s), who is calling,
the query's page arguments, and JSON answers."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from genqueue import JobQueue
from genqueue.http.auth import ApiKeys, Caller
from genqueue.http.errors import ApiError
from genqueue.http.limits import StreamLimit
from genqueue.http.metrics import Metrics
from genqueue.http.sse import JobEvents
from genqueue.wire import DEFAULT_LIMIT, MAX_LIMIT, encode

__all__ = [
    "EVENTS",
    "KEYS",
    "METRICS",
    "OPENAPI",
    "QUEUE",
    "STREAMS",
    "VIDEO_ROOT",
    "caller",
    "json_response",
    "query_cursor",
    "query_limit",
    "require_admin",
]

QUEUE = web.AppKey("queue", JobQueue)
EVENTS = web.AppKey("events", JobEvents)
KEYS = web.AppKey("api_keys", ApiKeys)
METRICS = web.AppKey("metrics", Metrics)
OPENAPI = web.AppKey("openapi", bytes)
VIDEO_ROOT = web.AppKey("video_root", Path)
STREAMS = web.AppKey("streams", StreamLimit)

_LIMIT = re.compile(r"[0-9]{1,3}")


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=encode(body), status=status, content_type="application/json", headers=headers
    )


def caller(request: web.Request) -> Caller:
    """Who the request's API key is; a 401 when it is no key of ours."""
    return request.app[KEYS].authenticate(request.headers.get("Authorization"))


def require_admin(request: web.Request) -> None:
    if not caller(request).admin:
        raise ApiError(403, "this route needs an admin API key")


def query_limit(request: web.Request) -> int:
    """The page size asked for (`limit`), DEFAULT_LIMIT when not asked."""
    raw_limit = request.query.get("limit", str(DEFAULT_LIMIT))
    if not _LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise ApiError(400, f"limit must be an integer from 1 to {MAX_LIMIT}", field="limit")
    return int(raw_limit)


def query_cursor(request: web.Request, pattern: re.Pattern[str]) -> str | None:
    """The `cursor` asked for, if it has the shape of the nextCursor this route returns."""
    cursor = request.query.get("cursor")
    if cursor is not None and not pattern.fullmatch(cursor):
        raise ApiError(400, "cursor must be a nextCursor this API returned", field="cursor")
    return cursor
