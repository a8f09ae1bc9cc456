"""Submissions as callers give them (a GenerationRequest, a dict, or JSON bytes), decoded."""

from __future__ import annotations

import decimal
import json
from typing import Any

import msgspec

from genqueue.config import Config
from genqueue.convert import Refused, convert
from genqueue.errors import InvalidRequest
from genqueue.ids import new_id
from genqueue.models import (
    GenerationRequest,
    Job,
    Route,
    check_across_fields,
    validate_request,
)
from genqueue.providers.registry import Registry

__all__ = ["RequestLike", "Routing", "new_job", "parse_request"]

RequestLike = GenerationRequest | dict[str, Any] | bytes
_REQUEST = msgspec.json.Decoder(GenerationRequest)
# Past this exponent an integral float literal stays a float (`1e999999999` is no int to build).
_MAX_EXPONENT = 30


def _json_number(literal: str) -> int | float:
    """A JSON number with a fraction or an exponent, as JSON Schema reads it: `5.0` and
    `1e3` are integers, `5.5` is not."""
    number = decimal.Decimal(literal)
    if number.is_finite() and number.adjusted() <= _MAX_EXPONENT and number == number.to_integral():
        return int(number)
    return float(literal)


_JSON = msgspec.json.Decoder(float_hook=_json_number)


def parse_request(request: RequestLike) -> GenerationRequest:
    """Decode and check a request; InvalidRequest names the bad field. A request's fields
    are checked by their types (genqueue.models), then the rules across fields."""
    if isinstance(request, GenerationRequest):
        validate_request(request)  # built in Python: its types were not checked yet
        return request
    req = _from_json(request) if isinstance(request, bytes) else _typed(request)
    check_across_fields(req)
    return req


def _from_json(raw: bytes) -> GenerationRequest:
    """The typed decoder first (one pass); only when it refused the body, read the body as
    plain JSON and convert it field by field, which names the field at fault (and takes an
    integral `5.0` where an integer belongs, as JSON Schema does)."""
    try:
        return _REQUEST.decode(raw)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        raise _not_json(exc) from None
    except UnicodeDecodeError as exc:  # msgspec checks UTF-8 only when it builds a str
        raise _not_json(exc) from None
    try:
        try:
            data = _JSON.decode(raw)
        except msgspec.DecodeError as exc:  # malformed after all, or an integer of
            try:  # thousands of digits (valid JSON that plain msgspec values cannot hold)
                data = json.loads(raw, parse_float=_json_number, parse_int=_bounded_int)
            except ValueError:
                raise _not_json(exc) from None
        return _typed(data)
    except UnicodeDecodeError as exc:  # msgspec checks UTF-8 only when it builds a str
        raise _not_json(exc) from None
    except RecursionError:  # valid JSON, arrays or objects nested a thousand deep
        raise InvalidRequest("the body is nested too deeply for any field") from None


def _bounded_int(literal: str) -> int | float:
    """An integer literal as a value: one longer than any field takes reads as a float
    (an integer field then refuses it, by name), never a number of thousands of digits."""
    return int(literal) if len(literal) <= 40 else float(literal)


def _typed(data: Any) -> GenerationRequest:
    try:
        req: GenerationRequest = convert(data, GenerationRequest)
    except Refused as exc:
        raise InvalidRequest(str(exc), field=exc.field) from None
    return req


def _not_json(exc: Exception) -> InvalidRequest:
    reason = exc.reason if isinstance(exc, UnicodeDecodeError) else str(exc)
    what = "valid UTF-8" if isinstance(exc, UnicodeDecodeError) else "valid JSON"
    return InvalidRequest(f"body is not {what}: {reason}", code="invalid_json")


def new_job(req: GenerationRequest, user_id: str, *, now_s: float, routes: list[Route]) -> Job:
    """The job a request makes; `routes`: the providers and models it may run on, in order
    (checked against each model's capability row), each with one paid start's price."""
    job_id = req.id or new_id()
    return Job(
        id=job_id,
        # Unique per job record, whatever the id: a client id reused after retention
        # gets a new generation (and so new webhook-ids). A server-chosen id is unique.
        generation_id=job_id if req.id is None else new_id(),
        user_id=user_id,
        prompt=req.prompt,
        parameters=req.parameters,
        provider=routes[0].provider,
        model=routes[0].model,
        routes=routes if len(routes) > 1 else None,
        estimated_cost=routes[0].cost,  # a fallback takes its route's own
        priority=req.priority,
        created_at=now_s,
        updated_at=now_s,
    )


class Routing:
    """The routes a request's job may take: its provider (or its ordered fallback list) and
    model, each checked against the model's capability row and priced, before anything is
    stored. The registry is built at the first submission."""

    def __init__(self, config: Config):
        self._config = config
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        """The providers this queue offers (GET /api/providers)."""
        if self._registry is None:
            self._registry = Registry(self._config)
        return self._registry

    def __call__(self, req: GenerationRequest) -> list[Route]:
        registry = self.registry
        return [
            msgspec.structs.replace(r, cost=registry.start_cost(r, req.parameters))
            for r in registry.route(req)
        ]
