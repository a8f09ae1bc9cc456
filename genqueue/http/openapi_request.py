"""The OpenAPI schema of `POST /api/generations`' body (its rules: `validate_request` and
the provider's capability table, whose models and parameters depend on the configuration)."""

from __future__ import annotations

from typing import Any

from genqueue import JOB_ID_PATTERN, MAX_PROMPT_CHARS, Config
from genqueue.models import MAX_FALLBACK, MAX_NAME_CHARS, PROVIDERS
from genqueue.providers.registry import ALIASES, Registry
from genqueue.providers.veo.schema import model_and_parameters_schema, model_clauses

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
    """The submission's schema for the providers `config` offers (each model's limits)."""
    registry = Registry(config or Config())
    veo = registry.veo
    model, parameters, _ = model_and_parameters_schema(veo.dialect, veo.model, veo.models)
    schema = {**REQUEST_SCHEMA, "properties": dict(REQUEST_SCHEMA["properties"])}
    names = [n for n, c in ALIASES.items() if c in registry.providers]
    one = {**REQUEST_SCHEMA["properties"]["provider"], "enum": names}
    one.pop("default", None)
    schema["properties"]["provider"] = {
        "anyOf": [
            one,
            {"type": "array", "items": one, "minItems": 1, "maxItems": MAX_FALLBACK},
        ],
        "default": "veo3",
        "description": "One provider, or an ordered fallback list (each then runs its "
        "default model: no `model`).",
    }
    schema["properties"]["parameters"] = parameters
    clauses: list[dict[str, Any]] = []
    all_models: list[str | None] = []
    for name, info in registry.providers.items():
        aliases = [n for n, c in ALIASES.items() if c == name]
        named = {"anyOf": [{"enum": aliases}, {"type": "array", "contains": {"enum": aliases}}]}
        when: dict[str, Any] = {"required": ["provider"], "properties": {"provider": named}}
        if name == "veo3":  # the default provider
            when = {"anyOf": [when, {"not": {"required": ["provider"]}}]}
        models = [m.id for m in info.models]
        all_models += models
        clauses.append({"if": when, "then": {"properties": {"model": {"enum": [*models, None]}}}})
        rows = {m.id: m.capabilities for m in info.models}
        clauses += model_clauses(rows, info.default_model, when)
    schema["properties"]["model"] = {**model, "enum": [*all_models, None]}
    clauses.append(  # a fallback list: each provider's default model
        {
            "if": {
                "required": ["provider"],
                "properties": {"provider": {"type": "array", "minItems": 2}},
            },
            "then": {"properties": {"model": {"type": "null"}}},
        }
    )
    schema["allOf"] = clauses
    return schema
