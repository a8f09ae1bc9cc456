"""The OpenAPI schema of `POST /api/generations`' body (its rules: `validate_request`)."""

from __future__ import annotations

from typing import Any

from genqueue import JOB_ID_PATTERN, MAX_PROMPT_CHARS, MAX_SEED

__all__ = ["REQUEST_SCHEMA"]

_TEXT = {"type": "string", "maxLength": MAX_PROMPT_CHARS}
REQUEST_SCHEMA: dict[str, Any] = {
    "title": "GenerationRequest",
    "type": "object",
    "additionalProperties": False,
    "required": ["prompt"],
    "properties": {
        "prompt": {**_TEXT, "minLength": 1, "pattern": r"\S", "description": "Not blank."},
        "id": {
            "type": ["string", "null"],
            "pattern": JOB_ID_PATTERN,
            "description": "Client-chosen id: the same id again returns the same job (200).",
        },
        "parameters": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "duration": {"type": "integer", "enum": [4, 6, 8], "default": 8},
                "aspectRatio": {"type": "string", "enum": ["16:9", "9:16"], "default": "16:9"},
                "resolution": {
                    "type": "string",
                    "enum": ["720p", "1080p", "4k"],
                    "default": "720p",
                    "description": "1080p and 4k need duration 8.",
                },
                "negativePrompt": {"type": ["string", "null"], "maxLength": MAX_PROMPT_CHARS},
                "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_SEED},
            },
            "if": {
                "required": ["resolution"],
                "properties": {"resolution": {"enum": ["1080p", "4k"]}},
            },
            "then": {"properties": {"duration": {"const": 8}}},
        },
        "provider": {"type": "string", "default": "veo3"},
        "model": {"type": ["string", "null"]},
        "priority": {
            "type": "integer",
            "minimum": 0,
            "maximum": 10,
            "default": 0,
            "description": "Higher starts first.",
        },
    },
}
