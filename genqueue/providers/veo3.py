"""The Veo 3 client's former home: its names, re-exported from genqueue.providers.veo."""

from genqueue.providers.veo import (
    GEMINI_DEFAULT_MODEL,
    MAX_REDIRECTS,
    VERTEX_DEFAULT_MODEL,
    Operation,
    Veo3Client,
    VideoParams,
    VideoRef,
    validate_params,
)

__all__ = [
    "DEFAULT_MODEL",
    "GEMINI_DEFAULT_MODEL",
    "MAX_REDIRECTS",
    "Operation",
    "Veo3Client",
    "VideoParams",
    "VideoRef",
    "validate_params",
]

# Vertex's default; the Gemini API's is GEMINI_DEFAULT_MODEL (genqueue.providers.veo.settings).
DEFAULT_MODEL = VERTEX_DEFAULT_MODEL
