"""The two doors to Veo as the fake models them: which models each serves, the words of a
refusal, the parameters each takes, and the shape of a finished operation.

Gemini API (generativelanguage.googleapis.com, `x-goog-api-key`):
  POST /v1beta/models/{m}:predictLongRunning, GET /v1beta/models/{m}/operations/{id},
  GET /v1beta/models/{m} (the model check), GET /v1beta/files/{id}:download?alt=media.
  google-genai 2.34.0 `_GenerateVideosOperation_from_mldev` reads
  `response.generateVideoResponse.generatedSamples[].video.uri` and
  `raiMediaFilteredCount` / `raiMediaFilteredReasons`.
Vertex AI ({location}-aiplatform.googleapis.com, OAuth bearer token; both `v1` and
`v1beta1`, google-genai's default: `_api_client.py` sets `api_version = 'v1beta1'`):
  POST /{v}/projects/{p}/locations/{l}/publishers/google/models/{m}:predictLongRunning and
  `:fetchPredictOperation` (`operations.py`: `path = '{resourceName}:fetchPredictOperation'`,
  the operation name up to `/operations/`), GET /{v}/publishers/google/models/{m} (the
  model check: Vertex AI's `publishers.models.get`, "Gets a Model Garden publisher model",
  name "publishers/{publisher}/models/{publisher_model}", in v1 and v1beta1); express mode
  (`vertexai=True, api_key=...`, no project) calls the same paths without
  `projects/{p}/locations/{l}/`, with `x-goog-api-key`.
  google-genai 3.x `_Video_from_vertex` reads `response.videos[].gcsUri` /
  `bytesBase64Encoded` / `mimeType`; `storageUri` comes from `output_gcs_uri`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AUDIO_REASON",
    "GEMINI_MODELS",
    "GOOGLE_MODELS",
    "KNOWN_MODELS",
    "PROMPT_BLOCK_CODE",
    "PROMPT_BLOCK_MESSAGE",
    "SAFETY_REASON",
    "VERTEX_MODELS",
    "check_parameters",
    "gemini_model_resource",
    "model_not_found",
    "vertex_model_resource",
]

# Which door serves which id (Google's model tables, late 2026). The Gemini API serves the
# 3.1 preview ids; Vertex AI the GA "-001" ids (google-genai's latest Vertex test model is
# veo-3.1-lite-generate-001). An id a door does not serve answers 404 there.
GEMINI_MODELS = ("veo-3.1-generate-preview", "veo-3.1-fast-generate-preview")
VERTEX_MODELS = (
    "veo-3.1-generate-001",
    "veo-3.1-fast-generate-001",
    "veo-3.1-lite-generate-001",
)
# The strict table: exactly what Google serves on each door. (The Gemini door also served
# veo-3.1-generate-001 here until the client's per-door defaults landed, issue 11.)
GOOGLE_MODELS: dict[str, tuple[str, ...]] = {"gemini": GEMINI_MODELS, "vertex": VERTEX_MODELS}
KNOWN_MODELS: dict[str, tuple[str, ...]] = GOOGLE_MODELS

SAFETY_REASON = (
    "Veo could not generate videos because the input prompt violates Google's Responsible AI "
    "practices. Support codes: 58061214"
)
# Vertex reports a blocked prompt as a finished operation with an error (gRPC 3).
PROMPT_BLOCK_CODE = 3
PROMPT_BLOCK_MESSAGE = (
    "The prompt could not be submitted. This prompt contains sensitive words that violate "
    "Google's Responsible AI practices. Try rephrasing the prompt. If you think this was an "
    "error, send feedback. Support codes: 29310472"
)
# The audio filter blocks at random: the same prompt may pass on the next try.
AUDIO_REASON = (
    "We encountered an issue with the audio for your prompt, so the video could not be "
    "generated. Please try a different prompt. You have not been charged for this request. "
    "Support codes: 39322892"
)


def model_not_found(door: str, model: str, resource: str) -> str:
    """Google's 404 message for a model the door does not serve."""
    if door == "gemini":
        return (
            f"models/{model} is not found for API version v1beta, or is not supported for "
            "predictLongRunning. Call ListModels to see the list of available models and "
            "their supported methods."
        )
    return (
        f"Publisher Model `{resource}` was not found or your project does not have access "
        "to it. Please ensure you are using a valid model version. For more information, "
        "see: https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions"
    )


def gemini_model_resource(model: str) -> dict[str, Any]:
    """`GET /v1beta/models/{m}` for a served model (google.ai.generativelanguage Model)."""
    return {
        "name": f"models/{model}",
        "version": "3.1",
        "displayName": "Veo 3.1" + (" fast" if "fast" in model else ""),
        "description": "Veo 3.1, Google's video generation model.",
        "inputTokenLimit": 480,
        "outputTokenLimit": 8192,
        "supportedGenerationMethods": ["predictLongRunning"],
    }


def vertex_model_resource(model: str) -> dict[str, Any]:
    """`GET /{v}/publishers/google/models/{m}` for a served model (a PublisherModel)."""
    return {
        "name": f"publishers/google/models/{model}",
        "versionId": model.rsplit("-", 1)[-1],
        "openSourceCategory": "PROPRIETARY",
        "launchStage": "GA",
        "publisherModelTemplate": f"projects/{{project}}/locations/{{location}}/publishers/"
        f"google/models/{model}",
    }


def check_parameters(params: dict[str, Any], door: str) -> str | None:
    """Google's 400 message for parameters the real API refuses, or None."""
    if door == "gemini":
        for name in ("generateAudio", "seed", "storageUri"):
            if name in params:
                return f"Invalid JSON payload received. Unknown name \"{name}\" at 'parameters'."
    duration = params.get("durationSeconds", 8)
    if duration not in (4, 6, 8):
        return (
            "The number value for `durationSeconds` is out of bound. "
            "Please provide a value between 4 and 8, inclusive."
        )
    if params.get("aspectRatio", "16:9") not in ("16:9", "9:16"):
        return "`aspectRatio` must be 16:9 or 9:16."
    if params.get("resolution", "720p") not in ("720p", "1080p", "4k"):
        return "`resolution` must be 720p, 1080p or 4k."
    if params.get("resolution", "720p") != "720p" and duration != 8:
        return "1080p and 4k videos must be 8 seconds long."
    count = params.get("sampleCount", 1)
    if not isinstance(count, int) or not 1 <= count <= 4:
        return "`sampleCount` must be between 1 and 4."
    uri = params.get("storageUri")
    if uri is not None and (not isinstance(uri, str) or not uri.startswith("gs://")):
        return "`storageUri` must be a Cloud Storage URI (gs://bucket/prefix)."
    return None
