"""RetryPolicy: how often to try again and how long to wait between tries, as a value.

One value serves every retry in genqueue (Temporal's `RetryPolicy` shape, dramatiq's pure
`compute_backoff`): a durable actor's failing alarm, a job's attempts, a provider call (and
the operations of one attempt), a webhook's delivery. Attempts are counted from 1; after
attempt `n` failed, `gives_up(n)` says whether that was the last one and `delay_s(n)` is the
wait before attempt `n + 1`:

    delay_s(n) = min(maximum_interval_s, initial_interval_s * backoff_coefficient ** (n - 1))

or, when `intervals_s` is given (a schedule written out, as GENQUEUE_WEBHOOK_RETRY_S is),
`intervals_s[n - 1]` (its last entry once past its end). `jitter` stretches or shrinks a
wait by up to that fraction of itself, and only with a random source the caller passes in:
without one the functions are pure.
"""

from __future__ import annotations

import math
import random

import msgspec

__all__ = ["RetryPolicy"]


class RetryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """When to try again. `maximum_attempts` counts the first try (1: never retried)."""

    initial_interval_s: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval_s: float = math.inf
    maximum_attempts: int = 3
    intervals_s: tuple[float, ...] = ()  # waits before the 2nd, 3rd, ... try, written out
    jitter: float = 0.0  # a fraction in [0, 1): applied only with an injected random source

    def __post_init__(self) -> None:
        _check_wait("initial_interval_s", self.initial_interval_s)
        if not (math.isfinite(self.backoff_coefficient) and self.backoff_coefficient >= 1.0):
            raise ValueError(f"backoff_coefficient must be >= 1, got {self.backoff_coefficient!r}")
        if math.isnan(self.maximum_interval_s) or (
            self.maximum_interval_s < self.initial_interval_s
        ):
            raise ValueError(
                f"maximum_interval_s ({self.maximum_interval_s!r}) must be >= "
                f"initial_interval_s ({self.initial_interval_s!r})"
            )
        if self.maximum_attempts < 1:
            raise ValueError(f"maximum_attempts must be 1 or more, got {self.maximum_attempts!r}")
        for wait in self.intervals_s:
            _check_wait("intervals_s", wait)
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")

    @classmethod
    def schedule(cls, intervals_s: tuple[float, ...], *, jitter: float = 0.0) -> RetryPolicy:
        """One try, then one retry after each wait of `intervals_s` in turn, then no more."""
        return cls(
            intervals_s=tuple(intervals_s),
            maximum_attempts=len(intervals_s) + 1,
            jitter=jitter,
        )

    @property
    def maximum_retries(self) -> int:
        """The tries after the first."""
        return self.maximum_attempts - 1

    def gives_up(self, attempt: int) -> bool:
        """Attempt `attempt` (from 1) failed: was it the last one?"""
        return attempt >= self.maximum_attempts

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt `attempt` (from 1) failed, before the next one.

        Pure without `rng`; with one (and a `jitter`), the wait moves by up to `jitter` of
        itself, drawn from `rng`. Never more than `maximum_interval_s`."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt!r}")
        if self.intervals_s:
            base = float(self.intervals_s[min(attempt, len(self.intervals_s)) - 1])
        else:
            base = self._geometric_s(attempt)
        if rng is not None and self.jitter > 0.0 and base > 0.0:
            base *= 1.0 + rng.uniform(-self.jitter, self.jitter)
        return min(self.maximum_interval_s, base)

    def _geometric_s(self, attempt: int) -> float:
        if self.initial_interval_s == 0.0:
            return 0.0
        try:
            base = self.initial_interval_s * self.backoff_coefficient ** (attempt - 1)
        except OverflowError:  # a coefficient to the power of a very late attempt
            return self.maximum_interval_s
        return min(self.maximum_interval_s, base)


def _check_wait(name: str, wait: float) -> None:
    if not (math.isfinite(wait) and wait >= 0.0):
        raise ValueError(f"{name} must be finite and >= 0 seconds, got {wait!r}")
