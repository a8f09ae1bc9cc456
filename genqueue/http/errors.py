"""Error responses: every failure is `{"error": {"code", "message", "field"?}}` with a 4xx/5xx.

Handlers raise `ApiError` (or let a genqueue error through); `error_middleware` turns
it, aiohttp's own HTTP errors (unknown route, wrong method, body too large) and any
unexpected exception into that shape. Nothing here logs a request header.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping

import msgspec
import pykka
from aiohttp import web
from aiohttp.typedefs import Handler

from genqueue import (
    BudgetExceeded,
    IllegalTransition,
    InvalidRequest,
    JobNotFound,
    QueueFull,
    StorageError,
)

__all__ = [
    "ALL_CODES",
    "ApiError",
    "ErrorBody",
    "ErrorDetail",
    "error_middleware",
    "error_response",
]

log = logging.getLogger("genqueue.http")

# The codes a client can branch on (also listed in the OpenAPI document).
CODES: dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}
# Codes more specific than the status's own.
SPECIFIC_CODES = (
    "invalid_json",
    "job_finished",
    "id_conflict",
    "storage_unavailable",
    "queue_full",
    "budget_exceeded",
    "too_many_streams",
    "too_many_connections",
)
ALL_CODES = tuple(sorted({*CODES.values(), *SPECIFIC_CODES}))


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    """What went wrong; `field` is the JSON path of the offending input, when there is one."""

    code: str
    message: str
    field: str | None = None


class ErrorBody(msgspec.Struct):
    """The body of every error response."""

    error: ErrorDetail


class ApiError(Exception):
    """An error response to send: status, code, message and the field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


_ENCODER = msgspec.json.Encoder()


def error_response(err: ApiError) -> web.Response:
    body = ErrorBody(ErrorDetail(err.code, err.message, err.field))
    return web.Response(
        status=err.status,
        body=_ENCODER.encode(body),
        content_type="application/json",
        headers=err.headers,
    )


def invalid(exc: InvalidRequest) -> ApiError:
    code = exc.code if exc.code in ("invalid_json", "invalid_request") else "invalid_request"
    return ApiError(400, exc.message, code=code, field=exc.field)


_HTTP_MESSAGES: dict[int, str] = {
    404: "no such route",
    405: "method not allowed on this route",
    413: "request body is larger than the 1 MB limit",
}


def _from_http(exc: web.HTTPException) -> ApiError:
    message = _HTTP_MESSAGES.get(exc.status, exc.reason)
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    return ApiError(exc.status, message, headers=headers)


def _translate(exc: Exception, request: web.Request) -> ApiError | None:
    """The API error for a known failure, or None for a bug."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidRequest):
        return invalid(exc)
    if isinstance(exc, JobNotFound):
        return ApiError(404, "no such job")
    if isinstance(exc, BudgetExceeded):
        return ApiError(429, exc.message, code="budget_exceeded")
    if isinstance(exc, QueueFull):
        return ApiError(429, exc.message, code="queue_full", headers={"Retry-After": "5"})
    if isinstance(exc, IllegalTransition):
        return ApiError(409, str(exc), code="job_finished")
    if isinstance(exc, (StorageError, sqlite3.Error)):
        log.error("state store refused a request: %r", exc)
        return ApiError(
            503,
            "the state store is not accepting writes; try again later",
            code="storage_unavailable",
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, pykka.ActorDeadError):
        return ApiError(503, "the server is shutting down", headers={"Retry-After": "5"})
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_from_http(exc))
    except Exception as exc:
        err = _translate(exc, request)
        if err is None:
            log.exception("unexpected error in %s %s", request.method, request.rel_url.path)
            err = ApiError(500, "internal error")
        return error_response(err)
