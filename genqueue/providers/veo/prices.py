"""What Veo costs a second, per model (US dollars; dated defaults, FAL/VEO3_PRICE_PER_S
overrides them).

Source: the Gemini API's pricing page as a third-party comparison quotes it (reapi.ai,
"Cheapest Veo 3.1 API in 2026", May 2026; Google's page itself was not in the material read):
Standard $0.40 a second at 720p and 1080p, $0.60 at 4K; Fast $0.10 at 720p, $0.12 at 1080p,
$0.30 at 4K; Lite $0.05 at 720p, $0.08 at 1080p; audio always bundled on the Gemini API.
Vertex bills a video without audio (`generateAudio: false`) at about half (its Veo 3.1 rows
were $0.20 without audio and $0.40 with): the silent prices below are that half.
"""

from __future__ import annotations

from genqueue.providers.pricing import Price

__all__ = ["PRICES_DATE", "price_for"]

PRICES_DATE = "2026-05"

_STANDARD = Price(
    per_s={"720p": 0.40, "1080p": 0.40, "4k": 0.60},
    per_s_silent={"720p": 0.20, "1080p": 0.20, "4k": 0.30},
)
_FAST = Price(
    per_s={"720p": 0.10, "1080p": 0.12, "4k": 0.30},
    per_s_silent={"720p": 0.05, "1080p": 0.06, "4k": 0.15},
)
_LITE = Price(per_s={"720p": 0.05, "1080p": 0.08}, per_s_silent={"720p": 0.025, "1080p": 0.04})


def price_for(model: str) -> Price:
    """The model's row by its family (fast, lite, else standard: the dearest guess)."""
    if "lite" in model:
        return _LITE
    if "fast" in model:
        return _FAST
    return _STANDARD
