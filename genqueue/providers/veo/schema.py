"""The JSON Schema of a submission's `model` and `parameters`, drawn from the capability
table for the configured door, so the OpenAPI document refuses what the server refuses.

Each offered model adds an `if model is m then parameters fit m's row` clause; the default
model's clause also applies when `model` is absent or null.
"""

from __future__ import annotations

from typing import Any

from genqueue.models import MAX_IMAGE_B64_CHARS, MAX_PROMPT_CHARS, MAX_REFERENCE_IMAGES
from genqueue.providers.veo.capabilities import Dialect, ModelCaps, caps_for

__all__ = ["model_and_parameters_schema", "model_clauses"]

MAX_SEED = 2**32 - 1
# Canonical base64 (what binascii's strict mode takes): groups of 4, padding only at the end.
_BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"
IMAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["bytesBase64Encoded", "mimeType"],
    "properties": {
        "bytesBase64Encoded": {
            "type": "string",
            "minLength": 4,
            "maxLength": MAX_IMAGE_B64_CHARS,
            "pattern": _BASE64,
            "description": "The image, base64 (4 MiB decoded at most; 10 MiB for all images).",
        },
        "mimeType": {"type": "string", "enum": ["image/jpeg", "image/png", "image/webp"]},
    },
}


def _general_parameters() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "duration": {"type": "integer", "enum": [4, 6, 8], "default": 8},
            "aspectRatio": {"type": "string", "enum": ["16:9", "9:16"], "default": "16:9"},
            "resolution": {
                "type": "string",
                "enum": ["720p", "1080p", "4k"],
                "default": "720p",
                "description": "1080p and 4k need duration 8; which a model has: its row.",
            },
            "negativePrompt": {
                "type": ["string", "null"],
                "maxLength": MAX_PROMPT_CHARS,
                # no C0 control character but tab and newline (models.CONTROL_CHARS)
                "pattern": r"^[^\u0000-\u0008\u000b-\u001f]*$",
            },
            "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_SEED},
            "image": {"anyOf": [IMAGE_SCHEMA, {"type": "null"}], "description": "First frame."},
            "lastFrame": {"anyOf": [IMAGE_SCHEMA, {"type": "null"}]},
            "referenceImages": {
                "type": ["array", "null"],
                "items": IMAGE_SCHEMA,
                "maxItems": MAX_REFERENCE_IMAGES,
            },
            "sampleCount": {"type": "integer", "minimum": 1, "maximum": 4, "default": 1},
            "generateAudio": {"type": ["boolean", "null"]},
            "personGeneration": {
                "type": ["string", "null"],
                "enum": ["allow_all", "allow_adult", "dont_allow", None],
            },
        },
        "if": {"required": ["resolution"], "properties": {"resolution": {"enum": ["1080p", "4k"]}}},
        "then": {"properties": {"duration": {"const": 8}}},
    }


def _fits(caps: ModelCaps) -> dict[str, Any]:
    """The parameters one model's row allows (on top of the general shape)."""
    absent_or_null: dict[str, Any] = {"type": "null"}
    props: dict[str, Any] = {
        "duration": {"enum": list(caps.durations_s)},
        "resolution": {"enum": list(caps.resolutions)},
        "sampleCount": {"maximum": caps.max_sample_count},
        "personGeneration": {"enum": [*caps.person_generation, None]},
    }
    for name, allowed in (
        ("seed", caps.seed),
        ("generateAudio", caps.generate_audio),
        ("image", caps.image),
        ("lastFrame", caps.last_frame),
    ):
        if not allowed:
            props[name] = absent_or_null
    if caps.max_reference_images == 0:
        props["referenceImages"] = absent_or_null
    else:
        props["referenceImages"] = {"maxItems": caps.max_reference_images}
    return {
        "properties": props,
        "allOf": [
            {
                "if": {
                    "required": ["aspectRatio"],
                    "properties": {"aspectRatio": {"const": "9:16"}},
                },
                "then": {"properties": {"resolution": {"enum": list(caps.portrait_resolutions)}}},
            },
            {  # lastFrame needs image
                "if": {
                    "required": ["lastFrame"],
                    "properties": {"lastFrame": {"type": "object"}},
                },
                "then": {"required": ["image"], "properties": {"image": {"type": "object"}}},
            },
        ],
    }


def model_clauses(
    rows: dict[str, ModelCaps], default_model: str, when: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One `if model is m [and when] then parameters fit m's row` clause per model; `when`
    (a provider's condition) narrows each clause to requests for that provider."""
    clauses = []
    for name, caps in rows.items():
        chosen: dict[str, Any] = {"required": ["model"], "properties": {"model": {"const": name}}}
        if name == default_model:
            chosen = {
                "anyOf": [
                    chosen,
                    {"not": {"required": ["model"]}},
                    {"required": ["model"], "properties": {"model": {"type": "null"}}},
                ]
            }
        if when is not None:
            chosen = {"allOf": [when, chosen]}
        clauses.append({"if": chosen, "then": {"properties": {"parameters": _fits(caps)}}})
    return clauses


def model_and_parameters_schema(
    dialect: Dialect, default_model: str, models: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """The `model` and `parameters` property schemas, and the per-model clauses (`allOf`)."""
    model = {
        "type": ["string", "null"],
        "enum": [*models, None],
        "description": f"Default {default_model}.",
    }
    clauses = []
    for name in models:
        chosen: dict[str, Any] = {"required": ["model"], "properties": {"model": {"const": name}}}
        if name == default_model:
            chosen = {
                "anyOf": [
                    chosen,
                    {"not": {"required": ["model"]}},
                    {"required": ["model"], "properties": {"model": {"type": "null"}}},
                ]
            }
        fits = _fits(caps_for(dialect, name))
        clauses.append({"if": chosen, "then": {"properties": {"parameters": fits}}})
    return model, _general_parameters(), clauses
