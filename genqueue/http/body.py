"""The body of `POST /api/generations`, decoded as JSON Schema reads it.

JSON has one number type: to JSON Schema (and so to the OpenAPI document) `5.0` is an
integer, while msgspec's strict decoder refuses a float where the request has an int.
`parse_body` takes the fast path first and, only when that failed on a float, decodes
again with integral floats (`5.0`) made ints; `5.5` stays a float and is refused.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from genqueue import GenerationRequest, InvalidRequest, parse_request
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
    """Decode and validate a submission; InvalidRequest names the bad field."""
    try:
        return parse_request(raw)
    except InvalidRequest as exc:
        if exc.code == "invalid_json" or "got `float`" not in exc.message:
            raise
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as again:
            if "UTF-8" in str(again):  # msgspec stopped at the float before the bad bytes
                raise InvalidRequest(
                    f"body is not valid JSON: {again}", code="invalid_json"
                ) from None
            raise exc from None  # e.g. an integer orjson cannot hold: the first error
        if not isinstance(data, dict):
            raise
        return parse_request(_integral(data))


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value
