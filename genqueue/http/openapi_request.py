"""The OpenAPI schema of `POST /api/generations`' body (its rules: `validate_request` and
the provider's capability table, whose models and parameters depend on the configuration)."""

from __future__ import annotations

from typing import Any

from genqueue import JOB_ID_PATTERN, MAX_PROMPT_CHARS, Config
from genqueue.models import MAX_NAME_CHARS, PROVIDERS
from genqueue.providers.veo import resolve as resolve_veo
from genqueue.providers.veo.schema import model_and_parameters_schema

__all__ = ["REQUEST_SCHEMA", "request_schema"]

_TEXT = {"type": "string", "maxLength": MAX_PROMPT_CHARS}
# No C0 control character but tab and newline (models.CONTROL_CHARS), in ECMA-262 syntax.
_NO_CONTROLS = r"[^\u0000-\u0008\u000b-\u001f]"
REQUEST_SCHEMA: dict[str, Any] = {
    "title": "GenerationRequest",
    "type": "object",
    "additionalProperties": False,
    "required": ["prompt"],
    "properties": {
        "prompt": {
            **_TEXT,
            "minLength": 1,
            # something not blank, and no control character but tab and newline
            "pattern": f"^{_NO_CONTROLS}*[^\\s\\u0000-\\u001f]{_NO_CONTROLS}*$",
            "description": "Not blank; no control characters but tab and newline.",
        },
        "id": {
            "type": ["string", "null"],
            "pattern": JOB_ID_PATTERN,
            "description": "Client-chosen id: the same id again returns the same job (200).",
        },
        "provider": {
            "type": "string",
            "enum": list(PROVIDERS),
            "maxLength": MAX_NAME_CHARS,
            "default": "veo3",
        },
        "priority": {
            "type": "integer",
            "minimum": 0,
            "maximum": 10,
            "default": 0,
            "description": "Higher starts first.",
        },
    },
}


def request_schema(config: Config | None = None) -> dict[str, Any]:
    """The submission's schema for the door `config` configures (its models' limits)."""
    veo = resolve_veo(config or Config())
    model, parameters, clauses = model_and_parameters_schema(veo.dialect, veo.model, veo.models)
    schema = {**REQUEST_SCHEMA, "properties": dict(REQUEST_SCHEMA["properties"])}
    schema["properties"]["parameters"] = parameters
    schema["properties"]["model"] = model
    schema["allOf"] = clauses
    return schema
