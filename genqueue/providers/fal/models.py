"""The fal.ai video models genqueue offers: their inputs, their limits and their prices.

Sources (read 2026-12, quoted in tests/test_fake_fal_sdk.py): fal's model page for
`fal-ai/veo3.1` (fal.ai/models/fal-ai/veo3.1/llms.txt): input `prompt` (required),
`aspect_ratio` "16:9" | "9:16", `duration` "4s" | "6s" | "8s" (strings), `negative_prompt`,
`resolution` "720p" | "1080p" | "4k", `generate_audio` (default true), `seed`, `auto_fix`,
`safety_tolerance`; output `{"video": {"url", "content_type", "file_name", "file_size"}}`.
Pricing on that page: "$0.20 [per second] without audio or $0.40 with audio for 720p or
1080p. At 4k, $0.40 per second without audio, or $0.60 with". `fal-ai/veo3.1/fast` (fal's
API reference page "Veo3.1 Fast API"): the same input at 720p or 1080p; its price, $0.10 a
second without audio and $0.15 with, is as third-party resellers quote fal's page (fal's
own page was not in the material read): an operator overrides it with FAL_PRICE_PER_S.
"""

from __future__ import annotations

from genqueue.providers.pricing import Price
from genqueue.providers.veo.capabilities import ModelCaps

__all__ = ["DEFAULT_MODEL", "MODELS", "PRICES", "PRICES_DATE"]

DEFAULT_MODEL = "fal-ai/veo3.1"
PRICES_DATE = "2026-12"

_TEXT_TO_VIDEO = dict(
    seed=True,
    generate_audio=True,
    max_sample_count=1,
    image=False,  # image-to-video is another endpoint on fal (…/image-to-video)
    last_frame=False,
    max_reference_images=0,
    person_generation=(),  # fal's Veo endpoints take no personGeneration
)

MODELS: dict[str, ModelCaps] = {
    "fal-ai/veo3.1": ModelCaps(
        resolutions=("720p", "1080p", "4k"),
        portrait_resolutions=("720p", "1080p", "4k"),
        **_TEXT_TO_VIDEO,  # type: ignore[arg-type]
    ),
    "fal-ai/veo3.1/fast": ModelCaps(**_TEXT_TO_VIDEO),  # type: ignore[arg-type]
}

PRICES: dict[str, Price] = {
    "fal-ai/veo3.1": Price(
        per_s={"720p": 0.40, "1080p": 0.40, "4k": 0.60},
        per_s_silent={"720p": 0.20, "1080p": 0.20, "4k": 0.40},
    ),
    "fal-ai/veo3.1/fast": Price(
        per_s={"720p": 0.15, "1080p": 0.15}, per_s_silent={"720p": 0.10, "1080p": 0.10}
    ),
}
