"""The body of `POST /api/generations`: declared JSON, decoded as JSON Schema reads it
(JSON has one number type: `5.0` is an integer; genqueue.requests)."""

from __future__ import annotations

from aiohttp import web

from genqueue import GenerationRequest, parse_request
from genqueue.http.errors import ApiError

__all__ = ["parse_body", "require_json"]


def require_json(request: web.Request) -> None:
    """A 415 unless the body is declared JSON: `application/json` or `application/*+json`,
    in UTF-8 if a charset is named. A request with no Content-Type at all is read as JSON
    (a bare `curl --data-binary @file` or a hand-written client); one that declares
    something else (a form, plain text, octet-stream) is refused, so a body meant for
    another endpoint is never half-understood here."""
    if "Content-Type" not in request.headers:
        return
    kind = request.content_type.lower()
    major, _, minor = kind.partition("/")
    charset = (request.charset or "utf-8").lower()
    if (kind == "application/json" or (major == "application" and minor.endswith("+json"))) and (
        charset in ("utf-8", "utf8")
    ):
        return
    raise ApiError(
        415,
        f"send the body as JSON (Content-Type: application/json), not {kind!r}"
        + ("" if charset in ("utf-8", "utf8") else f" in {charset}"),
    )


def parse_body(raw: bytes) -> GenerationRequest:
    """Decode and check a submission's body (JSON, read as JSON Schema reads it: `5.0` is
    an integer); InvalidRequest names the bad field."""
    return parse_request(raw)
