"""The pinned input of the two fal models the fake serves, as fal's model pages give them.

`fal-ai/veo3.1` (fal.ai/models/fal-ai/veo3.1/llms.txt): `prompt` (string, required),
`aspect_ratio` ("16:9" | "9:16", default "16:9"), `duration` ("4s" | "6s" | "8s", default
"8s"), `negative_prompt`, `resolution` ("720p" | "1080p" | "4k", default "720p"),
`generate_audio` (default true), `seed`, `auto_fix`, `safety_tolerance` ("1"-"6").
`fal-ai/veo3.1/fast`: the same, at "720p" or "1080p". A field outside these is a 422, as
fal's FastAPI validation answers it: `{"detail": [{"loc": ["body", field], "msg", "type"}]}`.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["INPUTS", "Veo31Fast", "Veo31Input"]


class Veo31Input(msgspec.Struct, forbid_unknown_fields=True):
    prompt: str
    aspect_ratio: Literal["16:9", "9:16"] = "16:9"
    duration: Literal["4s", "6s", "8s"] = "8s"
    negative_prompt: str | None = None
    resolution: Literal["720p", "1080p", "4k"] = "720p"
    generate_audio: bool = True
    seed: int | None = None
    auto_fix: bool = True
    safety_tolerance: Literal["1", "2", "3", "4", "5", "6"] = "4"


class Veo31Fast(Veo31Input, forbid_unknown_fields=True):
    resolution: Literal["720p", "1080p"] = "720p"


INPUTS: dict[str, type[Veo31Input]] = {"fal-ai/veo3.1": Veo31Input, "fal-ai/veo3.1/fast": Veo31Fast}
