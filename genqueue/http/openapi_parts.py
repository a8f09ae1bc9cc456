"""Pieces the OpenAPI document's parts share: references to schemas, the error responses."""

from __future__ import annotations

from typing import Any

__all__ = ["ERRORS", "PUBLIC", "REF", "TOO_MANY_STREAMS", "error_ref", "json_ref"]

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
