"""The operations the fake starts: their record, their names, and what a poll answers.

A Gemini operation is `models/{m}/operations/{id}` and finishes as
`{"done": true, "response": {"generateVideoResponse": {"generatedSamples": [...]}}}`; a
Vertex one is `projects/{p}/locations/{l}/publishers/google/models/{m}/operations/{id}`
(express mode: from `publishers/`) and finishes as `{"response": {"videos": [...]}}`, each
video inline (`bytesBase64Encoded`) or, when the start sent `storageUri`, a `gs://` object.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from genqueue.providers.fake_veo.doors import (
    AUDIO_REASON,
    PROMPT_BLOCK_CODE,
    PROMPT_BLOCK_MESSAGE,
    SAFETY_REASON,
)
from genqueue.providers.fake_veo.video import build_mp4

__all__ = ["OpInfo", "RecordedRequest", "outcome_of", "poll_body"]

GRPC_MESSAGES = {3: "Invalid argument.", 13: "Internal error.", 14: "Service unavailable."}
_OP_ERROR = re.compile(r"\[op-error:(\d+)\]")
_GEMINI_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"
_VERTEX_TYPE = "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse"


@dataclass
class OpInfo:
    """One operation the fake started."""

    name: str
    model: str
    dialect: str  # "gemini" | "vertex" (express mode included)
    prompt: str
    parameters: dict[str, Any]
    started_at: float
    done_at: float
    file_ids: list[str]
    # "success" | "safety_blocked" | "prompt_blocked" | "audio_blocked" | "error"
    outcome: str
    error_code: int | None = None
    polls: int = 0
    downloads: int = 0
    gcs_objects: list[tuple[str, str]] = field(default_factory=list)  # (bucket, object)


@dataclass
class RecordedRequest:
    """A request as received (header names in lower case)."""

    method: str
    path_qs: str
    headers: dict[str, str]


def outcome_of(prompt: str, safety_marker: str, audio_blocked: bool) -> tuple[str, int | None]:
    """How an operation for `prompt` ends: the prompt's markers, then the armed audio blocks."""
    if safety_marker and safety_marker in prompt:
        return "safety_blocked", None
    if "[blocked-prompt]" in prompt:
        return "prompt_blocked", None
    if (match := _OP_ERROR.search(prompt)) is not None:
        return "error", int(match.group(1))
    if audio_blocked or "[audio-block]" in prompt:
        return "audio_blocked", None
    return "success", None


def poll_body(op: OpInfo, base: str, video_size: int, inline_max_bytes: int) -> dict[str, Any]:
    """The finished operation as the door answers it (`base`: the fake's own URL)."""
    body: dict[str, Any] = {"name": op.name, "done": True}
    if op.outcome == "error":
        code = op.error_code or 13
        body["error"] = {"code": code, "message": GRPC_MESSAGES.get(code, "Operation failed.")}
    elif op.outcome == "prompt_blocked" and op.dialect == "vertex":
        body["error"] = {"code": PROMPT_BLOCK_CODE, "message": PROMPT_BLOCK_MESSAGE}
    elif op.dialect == "gemini":
        body["response"] = {
            "@type": _GEMINI_TYPE,
            "generateVideoResponse": _gemini_result(op, base),
        }
    else:
        body["response"] = {"@type": _VERTEX_TYPE} | _vertex_result(
            op, base, video_size, inline_max_bytes
        )
    return body


def _filtered(op: OpInfo) -> dict[str, Any] | None:
    reason = {
        "safety_blocked": SAFETY_REASON,
        "prompt_blocked": SAFETY_REASON,
        "audio_blocked": AUDIO_REASON,
    }.get(op.outcome)
    if reason is None:
        return None
    return {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons": [reason]}


def _gemini_result(op: OpInfo, base: str) -> dict[str, Any]:
    filtered = _filtered(op)
    if filtered is not None:
        return filtered
    return {
        "generatedSamples": [
            {"video": {"uri": f"{base}/v1beta/files/{fid}:download?alt=media"}}
            for fid in op.file_ids
        ]
    }


def _vertex_result(op: OpInfo, base: str, video_size: int, inline_max_bytes: int) -> dict[str, Any]:
    filtered = _filtered(op)
    if filtered is not None:
        return filtered
    if op.gcs_objects:
        videos = [
            {"gcsUri": f"gs://{bucket}/{name}", "mimeType": "video/mp4"}
            for bucket, name in op.gcs_objects
        ]
    elif video_size <= inline_max_bytes:
        data = base64.b64encode(build_mp4(video_size)).decode()
        videos = [{"bytesBase64Encoded": data, "mimeType": "video/mp4"} for _ in op.file_ids]
    else:
        # Not Google's: without storageUri, Vertex returns the bytes inline. Kept so tests of
        # large videos can stream them from a URL (vertex_inline_max_bytes).
        videos = [
            {"gcsUri": f"{base}/v1beta/files/{fid}:download?alt=media", "mimeType": "video/mp4"}
            for fid in op.file_ids
        ]
    return {"raiMediaFilteredCount": 0, "videos": videos}
