"""The Veo 3 provider: both doors (Gemini API, Vertex AI), their credentials and limits."""

from genqueue.providers.veo.capabilities import ModelCaps, caps_for
from genqueue.providers.veo.client import MAX_REDIRECTS, Veo3Client
from genqueue.providers.veo.settings import (
    GEMINI_DEFAULT_MODEL,
    VERTEX_DEFAULT_MODEL,
    VeoSettings,
    resolve,
)
from genqueue.providers.veo.shapes import Image, Operation, VideoParams, VideoRef
from genqueue.providers.veo.validation import check_request, to_video_params, validate_params

__all__ = [
    "GEMINI_DEFAULT_MODEL",
    "MAX_REDIRECTS",
    "VERTEX_DEFAULT_MODEL",
    "Image",
    "ModelCaps",
    "Operation",
    "Veo3Client",
    "VeoSettings",
    "VideoParams",
    "VideoRef",
    "caps_for",
    "check_request",
    "resolve",
    "to_video_params",
    "validate_params",
]
