"""What a second of video costs: per model, by resolution and by whether it has audio.

Prices are in US dollars per second of video (the providers' own unit); an operator whose
currency differs, or who has negotiated prices, sets `{PROVIDER}_PRICE_PER_S` (one price a
second for every model of that provider). A job costs paid starts * seconds * price.
"""

from __future__ import annotations

import msgspec

__all__ = ["Price", "job_cost"]


class Price(msgspec.Struct, frozen=True, rename="camel"):
    """Per second, by resolution: with audio (`per_s`) and without (`per_s_silent`)."""

    per_s: dict[str, float]
    per_s_silent: dict[str, float] | None = None

    def for_video(self, resolution: str, audio: bool) -> float:
        table = self.per_s if audio or self.per_s_silent is None else self.per_s_silent
        if resolution in table:
            return table[resolution]
        return max(table.values(), default=0.0)  # an unlisted resolution: the dearest

    @classmethod
    def flat(cls, per_s: float) -> Price:
        return cls(per_s={"*": per_s})


def job_cost(price_per_s: float, seconds: float, paid_starts: int, samples: int = 1) -> float:
    """paid starts * seconds * price (* videos per start)."""
    return round(paid_starts * seconds * samples * price_per_s, 6)
