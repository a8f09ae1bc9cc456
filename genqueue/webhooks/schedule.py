"""When to try a webhook again: the retry schedule as a value and its pure delay function."""

from __future__ import annotations

import math
import random

import msgspec

__all__ = ["DEFAULT_DELAYS_S", "RetrySchedule", "parse_retry_s"]

# Svix's schedule: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_DELAYS_S: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)


class RetrySchedule(msgspec.Struct, frozen=True):
    """`delays_s[n]` is the wait before attempt `n` (0 is the first attempt), each stretched
    or shrunk by up to `jitter` of itself; after the last one the delivery is dead-lettered."""

    delays_s: tuple[float, ...] = DEFAULT_DELAYS_S
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not self.delays_s:
            raise ValueError("a retry schedule needs at least one delay")
        for delay in self.delays_s:
            _check_delay(delay)
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")

    @property
    def max_attempts(self) -> int:
        """How many attempts a delivery gets."""
        return len(self.delays_s)

    def delay_before(self, attempt: int, rng: random.Random) -> float | None:
        """Seconds to wait before attempt `attempt`, or None when attempts are exhausted."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        if attempt >= len(self.delays_s):
            return None
        base = float(self.delays_s[attempt])
        if base == 0.0 or self.jitter == 0.0:
            return base
        return base * (1.0 + rng.uniform(-self.jitter, self.jitter))


def _check_delay(delay: float) -> None:
    if not math.isfinite(delay) or delay < 0:
        raise ValueError(f"retry delays must be finite and >= 0 seconds, got {delay!r}")


def parse_retry_s(text: str, *, jitter: float = 0.1) -> RetrySchedule:
    """A schedule from `"0,5,300"` (seconds before each attempt; fractions allowed)."""
    delays: list[float] = []
    for position, item in enumerate(text.split(","), start=1):
        delays.append(_parse_delay(item.strip(), position))
    return RetrySchedule(delays_s=tuple(delays), jitter=jitter)


def _parse_delay(item: str, position: int) -> float:
    if not item:
        raise ValueError(f"retry delay #{position} is empty (expected e.g. '0,5,300')")
    try:
        delay = float(item)
    except ValueError:
        raise ValueError(f"retry delay #{position} {item!r} is not a number of seconds") from None
    if not math.isfinite(delay) or delay < 0:
        raise ValueError(f"retry delay #{position} {item!r} must be finite and >= 0 seconds")
    return delay
