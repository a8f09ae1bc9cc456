"""The JSON Schema clauses that fit a submission's `parameters` to its model's row of the
capability table, so the OpenAPI document refuses what the server refuses (the general
shape is the request's own type: genqueue.http.openapi_request).

Each offered model adds an `if model is m then parameters fit m's row` clause; the default
model's clause also applies when `model` is absent or null.
"""

from __future__ import annotations

from typing import Any

from genqueue.providers.veo.capabilities import ModelCaps

__all__ = ["model_clauses"]


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
    # an empty list is no reference image, as the server reads it (0 is the most for some)
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
