"""One table of Veo cases that two drivers run against the fake: Google's SDK
(tests/sdk/drive_veo.py) and the project's own client (Veo3Client), each result reduced to
one neutral Outcome so both are judged by the same expectations.

What each expectation rests on, from google-genai's source and Google's documentation:
- "Gemini door serves veo-3.1-*-preview; Vertex the -001 ids" (Gemini API video docs; the
  SDK's tests/models/test_generate_videos.py uses `veo-3.1-lite-generate-001` on Vertex);
- a 404 for an unserved model: "models/{m} is not found for API version v1beta, or is not
  supported for predictLongRunning" (Gemini), "Publisher Model `...` was not found" (Vertex);
- a Vertex prompt block is a finished operation whose `error.code` is 3 with a support code;
  the SDK keeps it in `operation.error` (`_GenerateVideosOperation_from_vertex` copies
  `error`); a Gemini one is `raiMediaFilteredReasons` (`_GenerateVideosResponse_from_mldev`);
- the audio filter's block says "You have not been charged" and may pass on a retry;
- a per-day 429 carries a `QuotaFailure` and no `RetryInfo`; a per-minute one a `RetryInfo`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from genqueue.errors import ProviderError
from genqueue.providers.fake_veo import AUDIO_REASON, PROMPT_BLOCK_MESSAGE, SAFETY_REASON
from genqueue.providers.fake_veo.video import build_mp4

__all__ = ["CASES", "Case", "Outcome", "check", "outcome_of_ours", "outcome_of_sdk"]

QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


@dataclass(frozen=True)
class Case:
    """One generation: which door and model, what to send, what to arm, what must come back."""

    name: str
    door: str  # "gemini" | "vertex" | "express"
    model: str
    expect: str  # "video" | "not_found" | "prompt_blocked" | "audio_blocked" | "quota_*"
    prompt: str = "a red fox running through snow"
    config: dict[str, Any] = field(default_factory=dict)  # GenerateVideosConfig fields
    faults: dict[str, Any] = field(default_factory=dict)  # POST /_fake/faults
    api_version: str | None = None  # None: the SDK's default (v1beta1 on Vertex)
    ours: bool = True  # the project's client can run it today

    @property
    def samples(self) -> int:
        return int(self.config.get("number_of_videos", 1))


CASES = [
    Case("gemini-preview", "gemini", "veo-3.1-generate-preview", "video"),
    Case(
        "gemini-fast-two-samples",
        "gemini",
        "veo-3.1-fast-generate-preview",
        "video",
        config={"number_of_videos": 2, "aspect_ratio": "9:16", "duration_seconds": 6},
    ),
    Case("gemini-vertex-only-id", "gemini", "veo-3.1-generate-001", "not_found"),
    Case(
        "gemini-prompt-block",
        "gemini",
        "veo-3.1-generate-preview",
        "prompt_blocked",
        prompt="[blocked-prompt] something",
    ),
    Case(
        "gemini-audio-block",
        "gemini",
        "veo-3.1-generate-preview",
        "audio_blocked",
        faults={"audio_blocks": 1},
    ),
    Case(
        "gemini-day-quota",
        "gemini",
        "veo-3.1-generate-preview",
        "quota_day",
        faults={"fail_starts": {"status": 429, "quota": "day"}},
    ),
    Case(
        "gemini-minute-quota",
        "gemini",
        "veo-3.1-generate-preview",
        "quota_minute",
        faults={"fail_starts": {"status": 429, "quota": "minute", "retry_after_s": 7}},
    ),
    Case("vertex-default-v1beta1", "vertex", "veo-3.1-generate-001", "video", ours=False),
    Case("vertex-v1", "vertex", "veo-3.1-generate-001", "video", api_version="v1"),
    Case(
        "vertex-lite-1080p",
        "vertex",
        "veo-3.1-lite-generate-001",
        "video",
        api_version="v1",
        config={"resolution": "1080p", "generate_audio": True, "seed": 7},
    ),
    Case(
        "vertex-gcs-output",
        "vertex",
        "veo-3.1-fast-generate-001",
        "video",
        config={"output_gcs_uri": "gs://genqueue-out/runs/a b+c", "number_of_videos": 2},
        ours=False,
    ),
    Case(
        "vertex-gemini-only-id", "vertex", "veo-3.1-generate-preview", "not_found", api_version="v1"
    ),
    Case(
        "vertex-prompt-block",
        "vertex",
        "veo-3.1-generate-001",
        "prompt_blocked",
        prompt="[blocked-prompt] something",
        api_version="v1",
    ),
    Case(
        "vertex-audio-block",
        "vertex",
        "veo-3.1-generate-001",
        "audio_blocked",
        prompt="a choir [audio-block]",
        api_version="v1",
    ),
    Case(
        "vertex-day-quota",
        "vertex",
        "veo-3.1-generate-001",
        "quota_day",
        api_version="v1",
        faults={"fail_starts": {"status": 429, "quota": "day"}},
    ),
    Case(
        "vertex-minute-quota",
        "vertex",
        "veo-3.1-generate-001",
        "quota_minute",
        api_version="v1",
        faults={"fail_starts": {"status": 429, "quota": "minute", "retry_after_s": 7}},
    ),
    Case("express-mode", "express", "veo-3.1-fast-generate-001", "video"),
]


@dataclass
class Outcome:
    """What a driver saw, reduced: videos, an HTTP error, an operation error, or a filter."""

    kind: str  # "video" | "http_error" | "op_error" | "filtered"
    videos: list[tuple[int, str]] = field(default_factory=list)  # (size, sha256)
    status: int | None = None
    code: int | None = None
    message: str = ""
    details: list[dict[str, Any]] = field(default_factory=list)
    retry_after_s: float | None = None
    retryable: bool | None = None
    provider_code: str | None = None  # ours: ProviderError.code


def outcome_of_sdk(result: dict[str, Any]) -> Outcome:
    if "exception" in result:
        exc = result["exception"]
        error = (exc.get("details") or {}).get("error", {})
        return Outcome(
            "http_error",
            status=exc["code"],
            message=exc["message"] or "",
            details=list(error.get("details", [])),
        )
    if "error" in result:
        return Outcome("op_error", code=result["error"]["code"], message=result["error"]["message"])
    if result.get("raiMediaFilteredReasons"):
        return Outcome("filtered", message="; ".join(result["raiMediaFilteredReasons"]))
    return Outcome("video", videos=[(v["size"], v["sha256"]) for v in result["videos"]])


def outcome_of_ours(error: ProviderError | None, videos: list[bytes]) -> Outcome:
    if error is None:
        return Outcome("video", videos=[(len(v), hashlib.sha256(v).hexdigest()) for v in videos])
    base = {"message": error.message, "retryable": error.retryable, "provider_code": error.code}
    if error.code in ("operation_error", "prompt_blocked"):
        code = int(error.message.split("gRPC code ", 1)[1].split(")", 1)[0])
        return Outcome("op_error", code=code, **base)
    if error.code in ("safety_blocked", "audio_blocked"):
        return Outcome("filtered", **base)
    return Outcome("http_error", status=error.status, retry_after_s=error.retry_after_s, **base)


def check(case: Case, seen: Outcome, video_size: int, *, sdk: bool) -> None:
    """The expectations of `case`, the same for both drivers (`sdk`: the SDK's details too)."""
    if case.expect == "video":
        expected = (video_size, hashlib.sha256(build_mp4(video_size)).hexdigest())
        assert seen.kind == "video", seen
        assert seen.videos == [expected] * case.samples, seen
    elif case.expect == "not_found":
        assert (seen.kind, seen.status) == ("http_error", 404), seen
        door_words = (
            "is not found for API version v1beta"
            if case.door == "gemini"
            else ("Publisher Model `")
        )
        assert door_words in seen.message and case.model in seen.message, seen
    elif case.expect == "prompt_blocked":
        if case.door == "gemini":
            assert seen.kind == "filtered" and SAFETY_REASON in seen.message, seen
        else:
            assert (seen.kind, seen.code) == ("op_error", 3), seen
            assert PROMPT_BLOCK_MESSAGE in seen.message and "Support codes: " in seen.message
    elif case.expect == "audio_blocked":
        assert seen.kind == "filtered" and AUDIO_REASON in seen.message, seen
        assert "You have not been charged" in seen.message
    else:
        _check_quota(case, seen, sdk=sdk)


def _check_quota(case: Case, seen: Outcome, *, sdk: bool) -> None:
    assert (seen.kind, seen.status) == ("http_error", 429), seen
    kinds = [d.get("@type") for d in seen.details]
    if case.expect == "quota_day":
        if sdk:
            assert QUOTA_FAILURE in kinds and RETRY_INFO not in kinds, seen.details
            (failure,) = [d for d in seen.details if d["@type"] == QUOTA_FAILURE]
            assert "PerDay" in failure["violations"][0]["quotaId"], failure
        else:  # the client names it, and pauses for the quota, not for a minute
            assert seen.provider_code == "quota_exhausted" and seen.retryable, seen
    elif sdk:
        assert RETRY_INFO in kinds and QUOTA_FAILURE in kinds, seen.details
        (info,) = [d for d in seen.details if d["@type"] == RETRY_INFO]
        assert info["retryDelay"] == "7s", info
    else:
        assert seen.retry_after_s == 7.0 and seen.provider_code == "rate_limited", seen
