"""The body of `POST /api/generations`, decoded as JSON Schema reads it.

JSON has one number type: to JSON Schema (and so to the OpenAPI document) `5.0` is an
integer, while msgspec's strict decoder refuses a float where the request has an int.
`parse_body` takes the fast path first and, only when that failed on a float, decodes
again with integral floats (`5.0`) made ints; `5.5` stays a float and is refused.
"""

from __future__ import annotations

from typing import Any

import orjson

from genqueue import GenerationRequest, InvalidRequest, parse_request

__all__ = ["parse_body"]


def parse_body(raw: bytes) -> GenerationRequest:
    """Decode and validate a submission; InvalidRequest names the bad field."""
    try:
        return parse_request(raw)
    except InvalidRequest as exc:
        if exc.code == "invalid_json" or "got `float`" not in exc.message:
            raise
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:  # e.g. an integer orjson cannot hold: the first error
            raise exc from None
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
