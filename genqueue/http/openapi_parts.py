"""Pieces the OpenAPI document's parts share: references to schemas, the error responses."""

from __future__ import annotations

from typing import Any

from genqueue import NAME_PATTERN
from genqueue.wire import DEFAULT_LIMIT, MAX_LIMIT

__all__ = [
    "ERRORS",
    "LIMIT_PARAM",
    "PUBLIC",
    "REF",
    "TOO_MANY_STREAMS",
    "USER_ID_PARAM",
    "error_ref",
    "json_ref",
]

REF = "#/components/schemas/"
PUBLIC: dict[str, Any] = {"security": []}  # a route that needs no API key


def json_ref(name: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF + name}}},
    }


def error_ref(description: str) -> dict[str, Any]:
    return json_ref("ErrorBody", description)


ERRORS = {
    "401": error_ref("Missing or unknown API key (or no keys configured)."),
    "default": error_ref("Any other error, in the same shape."),
}

TOO_MANY_STREAMS = error_ref(
    "This API key holds as many open event streams as it may (too_many_streams): "
    "GENQUEUE_MAX_STREAMS_PER_KEY."
)

LIMIT_PARAM: dict[str, Any] = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
}

USER_ID_PARAM: dict[str, Any] = {
    "name": "userId",
    "in": "query",
    "description": "One user's jobs (an admin key; another key may name only its own user).",
    "schema": {"type": "string", "pattern": f"^{NAME_PATTERN}$"},
}
