"""Submissions as callers give them (a GenerationRequest, a dict, or JSON bytes), decoded."""

from __future__ import annotations

from typing import Any

import msgspec

from genqueue.errors import InvalidRequest
from genqueue.models import GenerationRequest, validate_request

__all__ = ["RequestLike", "parse_request"]

RequestLike = GenerationRequest | dict[str, Any] | bytes
_REQUEST = msgspec.json.Decoder(GenerationRequest)


def parse_request(request: RequestLike) -> GenerationRequest:
    """Decode and validate a request; InvalidRequest names the bad field."""
    try:
        if isinstance(request, bytes):
            req = _REQUEST.decode(request)
        elif isinstance(request, dict):
            req = msgspec.convert(request, GenerationRequest)
        else:
            req = request
    except msgspec.ValidationError as exc:
        field = str(exc).rsplit("`$.", 1)[-1].rstrip("`") if "`$." in str(exc) else None
        raise InvalidRequest(str(exc), field=field) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}", code="invalid_json") from exc
    validate_request(req)
    return req
