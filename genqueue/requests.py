"""Submissions as callers give them (a GenerationRequest, a dict, or JSON bytes), decoded."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from genqueue.config import Config
from genqueue.errors import InvalidRequest
from genqueue.models import GenerationRequest, Job, Route, validate_request
from genqueue.providers.registry import Registry

__all__ = ["RequestLike", "Routing", "new_job", "parse_request"]

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
    except UnicodeDecodeError as exc:  # msgspec checks UTF-8 only when it builds a str
        raise InvalidRequest(f"body is not valid UTF-8: {exc.reason}", code="invalid_json") from exc
    validate_request(req)
    return req


def new_job(req: GenerationRequest, user_id: str, *, now_s: float, routes: list[Route]) -> Job:
    """The job a request makes; `routes`: the providers and models it may run on, in order
    (checked against each model's capability row), each with one paid start's price."""
    job_id = req.id or uuid.uuid4().hex
    return Job(
        id=job_id,
        # Unique per job record, whatever the id: a client id reused after retention
        # gets a new generation (and so new webhook-ids). A server-chosen id is unique.
        generation_id=job_id if req.id is None else uuid.uuid4().hex,
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
