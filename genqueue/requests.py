"""Submissions as callers give them (a GenerationRequest, a dict, or JSON bytes), decoded."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from genqueue.config import Config
from genqueue.errors import InvalidRequest
from genqueue.models import GenerationRequest, Job, validate_request
from genqueue.providers.veo import VeoSettings, check_request
from genqueue.providers.veo import resolve as resolve_veo

__all__ = ["ModelCheck", "RequestLike", "new_job", "parse_request"]

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


def new_job(req: GenerationRequest, user_id: str, *, now_s: float, model: str) -> Job:
    """The job a request makes; `model`: the one it runs on (checked by the provider)."""
    job_id = req.id or uuid.uuid4().hex
    return Job(
        id=job_id,
        # Unique per job record, whatever the id: a client id reused after retention
        # gets a new generation (and so new webhook-ids). A server-chosen id is unique.
        generation_id=job_id if req.id is None else uuid.uuid4().hex,
        user_id=user_id,
        prompt=req.prompt,
        parameters=req.parameters,
        provider=req.provider,
        model=model,
        priority=req.priority,
        created_at=now_s,
        updated_at=now_s,
    )


class ModelCheck:
    """The model a request's job will use, checked against the provider's capability table
    (Veo is the one provider: every job runs on it, whatever its `provider` says)."""

    def __init__(self, config: Config):
        self._config = config
        self._veo: VeoSettings | None = None  # resolved at the first submission

    def __call__(self, req: GenerationRequest) -> str:
        if self._veo is None:
            self._veo = resolve_veo(self._config)
        veo = self._veo
        return check_request(req, dialect=veo.dialect, default_model=veo.model, models=veo.models)
