"""What each Veo model accepts, per door: one table, read by request validation and the client.

Sources (read 2026-12): Google's Gemini API video guide (ai.google.dev/gemini-api/docs/video:
Veo 3.1 makes 8 s videos at 720p, 1080p or 4k, portrait or landscape, with a first and/or last
frame and up to three reference images); the Vertex model pages (Veo 3.1 generate-001 and
fast-generate-001 take reference images, 3.1 lite takes first/last frames but no references;
Vertex lists 720p and 1080p only); and google-genai's request converters
(`_GenerateVideosConfig_to_mldev` in 1.x raises "seed parameter is not supported in Gemini
API." and "generate_audio parameter is not supported in Gemini API."; `_to_vertex` sends
`seed`, `generateAudio`, `sampleCount`, `storageUri`). The Gemini guide gives one video per
request for Veo 3.x (`numberOfVideos`: 1); Vertex takes `sampleCount` 1-4.

A model that is not in the table (an operator's VEO3_MODELS entry Google added later) gets its
door's general row, so a new id works without a release.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["Dialect", "ModelCaps", "caps_for", "known_models"]

Dialect = Literal["gemini", "vertex"]


class ModelCaps(msgspec.Struct, frozen=True, rename="camel"):
    """One model's limits on one door (also shown by GET /api/providers)."""

    durations_s: tuple[int, ...] = (4, 6, 8)
    resolutions: tuple[str, ...] = ("720p", "1080p")
    # resolutions above 720p need an 8 s video (both doors document it)
    high_res_duration_s: int = 8
    # the resolutions a 9:16 video may have (Veo 3.0 made portrait at 720p only)
    portrait_resolutions: tuple[str, ...] = ("720p", "1080p")
    seed: bool = False
    generate_audio: bool = False
    max_sample_count: int = 1
    image: bool = True
    last_frame: bool = False
    max_reference_images: int = 0
    person_generation: tuple[str, ...] = ("allow_all", "allow_adult", "dont_allow")
    storage_uri: bool = False


_GEMINI = ModelCaps()
_GEMINI_31 = ModelCaps(
    resolutions=("720p", "1080p", "4k"),
    portrait_resolutions=("720p", "1080p", "4k"),
    last_frame=True,
    max_reference_images=3,
)
_VERTEX = ModelCaps(seed=True, generate_audio=True, max_sample_count=4, storage_uri=True)
_VERTEX_30 = msgspec.structs.replace(_VERTEX, portrait_resolutions=("720p",))
_VERTEX_31 = msgspec.structs.replace(_VERTEX, last_frame=True, max_reference_images=3)
_VERTEX_31_LITE = msgspec.structs.replace(_VERTEX, last_frame=True)

_TABLE: dict[Dialect, dict[str, ModelCaps]] = {
    "gemini": {
        "veo-3.1-generate-preview": _GEMINI_31,
        "veo-3.1-fast-generate-preview": _GEMINI_31,
    },
    "vertex": {
        "veo-3.1-generate-001": _VERTEX_31,
        "veo-3.1-fast-generate-001": _VERTEX_31,
        "veo-3.1-lite-generate-001": _VERTEX_31_LITE,
        "veo-3.0-generate-001": _VERTEX_30,
        "veo-3.0-fast-generate-001": _VERTEX_30,
    },
}
_DOOR: dict[Dialect, ModelCaps] = {"gemini": _GEMINI, "vertex": _VERTEX}


def caps_for(dialect: Dialect, model: str) -> ModelCaps:
    """The model's row, or its door's general row for a model the table does not know."""
    return _TABLE[dialect].get(model, _DOOR[dialect])


def known_models(dialect: Dialect) -> tuple[str, ...]:
    return tuple(_TABLE[dialect])
