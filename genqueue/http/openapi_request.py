"""The OpenAPI schemas of `POST /api/generations`' body: generated from the request's own
types (`msgspec.json.schema_components`: GenerationRequest, GenerationParams, ImageInput),
so the document and the server draw one line. On top come what no one field's type holds:
the rules across fields (genqueue.models.check_across_fields) and what this configuration
offers (its providers, their models, each model's capability row)."""

from __future__ import annotations

from typing import Any

import msgspec

from genqueue import Config, GenerationRequest
from genqueue.http.openapi_parts import REF
from genqueue.providers.registry import ALIASES, Registry
from genqueue.providers.veo.schema import model_clauses

__all__ = ["request_schemas"]

_DESCRIPTION = (
    "A video to generate. `provider` and `model` choose among those this server offers "
    "(GET /api/providers); the parameters must fit the chosen model's capability row."
)


def request_schemas(config: Config | None = None) -> dict[str, Any]:
    """The body's component schemas for the providers `config` offers."""
    _, components = msgspec.json.schema_components([GenerationRequest], ref_template=REF + "{name}")
    schemas: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(components))  # a copy
    request, params = schemas["GenerationRequest"], schemas["GenerationParams"]
    request["description"] = _DESCRIPTION
    params["description"] = "Video parameters; which a model takes: its capability row."
    props = request["properties"]
    props["id"]["description"] = "Client-chosen: the same id again returns the same job (200)."
    # across fields: 1080p and 4k need an 8 s video
    params["if"] = {
        "required": ["resolution"],
        "properties": {"resolution": {"enum": ["1080p", "4k"]}},
    }
    params["then"] = {"properties": {"duration": {"const": 8}}}
    registry = Registry(config or Config())
    _offered_providers(props["provider"], registry)
    request["allOf"] = _model_clauses(props["model"], registry)
    return schemas


def _offered_providers(provider: dict[str, Any], registry: Registry) -> None:
    names = [n for n, c in ALIASES.items() if c in registry.providers]
    one, many = provider["anyOf"]
    one["enum"] = many["items"]["enum"] = names
    provider["description"] = (
        "One provider, or an ordered fallback list (each then runs its default model: no `model`)."
    )


def _model_clauses(model: dict[str, Any], registry: Registry) -> list[dict[str, Any]]:
    """Narrow `model` to the models offered, and add one clause per provider (its models)
    and per model (its capability row), and the fallback list's rule across fields."""
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
    model["enum"] = [*all_models, None]
    model["description"] = f"Default: the provider's own ({registry.veo.model} for veo3)."
    clauses.append(  # a fallback list: each provider's default model
        {
            "if": {
                "required": ["provider"],
                "properties": {"provider": {"type": "array", "minItems": 2}},
            },
            "then": {"properties": {"model": {"type": "null"}}},
        }
    )
    return clauses
