"""Per-provider dispatch gates: each provider its own rate limit (token bucket), its own
concurrency cap and its own pause, so a 429 or a spent daily quota holds back only the jobs
of the provider that answered it.

Veo keeps the queue's historical settings and stored fields (GENQUEUE_RATE_LIMIT_PER_MINUTE,
`meta.paused_until`, `meta.spent_tokens`); other providers have their own keys
(GENQUEUE_FAL_RATE_LIMIT_PER_MINUTE, GENQUEUE_FAL_MAX_CONCURRENCY) and stored fields
(`meta.pauses`, `meta.provider_tokens`). GENQUEUE_MAX_CONCURRENCY stays the cap of all.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from genqueue.actors.ratelimit import RateWindow
from genqueue.config import Config

__all__ = ["DEFAULT_PROVIDER", "ProviderGates"]

DEFAULT_PROVIDER = "veo3"
CLOSED = math.inf  # at its concurrency cap: opens when one of its jobs ends


class _Meta(Protocol):
    paused_until: float
    pause_reason: str
    pause_s: float
    spent_tokens: list[float]
    pauses: dict[str, list[Any]]
    provider_tokens: dict[str, list[float]]


class ProviderGates:
    def __init__(self, cfg: Config):
        self.limits = {
            DEFAULT_PROVIDER: cfg.rate_limit_per_minute,
            "fal": cfg.fal_rate_limit_per_minute,
        }
        self.caps = {DEFAULT_PROVIDER: 0, "fal": cfg.fal_max_concurrency}
        self.rates = {p: RateWindow(limit) for p, limit in self.limits.items()}
        self.in_flight: dict[str, int] = {}
        self._spent = False  # a token was spent since the last save

    def rate(self, provider: str) -> RateWindow:
        window = self.rates.get(provider)
        if window is None:
            window = self.rates[provider] = RateWindow(0)
        return window

    def load(self, meta: _Meta) -> None:
        self.rate(DEFAULT_PROVIDER).load(meta.spent_tokens)
        for provider, spent in meta.provider_tokens.items():
            self.rate(provider).load(spent)

    def save(self, meta: _Meta) -> None:
        """Store the rate windows in `meta` (only if a token was spent since the last save)."""
        if not self._spent:
            return
        self._spent = False
        meta.spent_tokens = self.rate(DEFAULT_PROVIDER).snapshot()
        meta.provider_tokens = {
            p: w.snapshot()
            for p, w in self.rates.items()
            if p != DEFAULT_PROVIDER and self.limits.get(p)
        }

    @staticmethod
    def pause_of(meta: _Meta, provider: str) -> tuple[float, str]:
        if provider == DEFAULT_PROVIDER:
            return meta.paused_until, meta.pause_reason
        until, reason = (meta.pauses.get(provider) or [0.0, ""])[:2]
        return float(until), str(reason)

    @staticmethod
    def set_pause(meta: _Meta, provider: str, until: float, reason: str) -> None:
        if provider == DEFAULT_PROVIDER:
            meta.paused_until, meta.pause_reason = until, reason
        else:
            meta.pauses[provider] = [until, reason]

    def pause(
        self,
        meta: _Meta,
        provider: str,
        until: float,
        reason: str,
        now: float,
        *,
        rate_limit_pause_s: float,
        quota_pause_s: float,
        promote: bool = True,
    ) -> tuple[str, float, bool]:
        """A provider asked to back off until `until`: `(reason, until, changed)`, where
        `changed` says the stored pause was extended.

        A rate limit back right after its pause ended (within one pause length), with no
        start accepted or job completed between, is a quota that does not lift in a
        minute (a daily one without a QuotaFailure): it pauses for `quota_pause_s`, unless
        `promote` is False (a worker's notice: only a job's end may decide that)."""
        ended, was = self.pause_of(meta, provider)
        length = (meta.pause_s if provider == DEFAULT_PROVIDER else 0.0) or rate_limit_pause_s
        if promote and reason == "rate_limit" and was and ended <= now <= ended + length:
            reason, until = "quota", now + quota_pause_s
        if until <= ended:
            return reason, until, False
        self.set_pause(meta, provider, until, reason)
        if provider == DEFAULT_PROVIDER:
            meta.pause_s = until - now
        return reason, until, True

    def works_again(self, meta: _Meta, provider: str, since: float) -> bool:
        """A start made at `since` was accepted: if it was made after the provider's last
        pause ended, that pause is news (the next 429 starts a plain rate-limit pause).
        True if the stored pause changed."""
        ended, reason = self.pause_of(meta, provider)
        if not reason or since < ended:
            return False
        self.set_pause(meta, provider, ended, "")
        return True

    def opens_at(self, meta: _Meta, provider: str, now: float) -> float:
        """When a job of `provider` may start: `now` or earlier if at once, CLOSED while at
        its cap, else the end of its pause or its next token."""
        until, _ = self.pause_of(meta, provider)
        if until > now:
            return until
        cap = self.caps.get(provider, 0)
        if cap and self.in_flight.get(provider, 0) >= cap:
            return CLOSED
        return self.rate(provider).next_token_at(now)

    def spend(self, provider: str, now: float) -> None:
        """A token of the provider's bucket (a dispatch)."""
        window = self.rate(provider)
        if window.per_minute:
            window.spend(now)
            self._spent = True

    def closed(self, meta: _Meta, now: float) -> dict[str, float]:
        """The providers whose gate is shut at `now`, each with `opens_at` (of all those
        in `rates`): one pass, no work for a provider with no pause, rate limit or cap."""
        shut: dict[str, float] = {}
        for provider, window in self.rates.items():
            paused = self.pause_of(meta, provider)[0] > now
            if paused or window.per_minute or self.caps.get(provider):
                at = self.opens_at(meta, provider, now)
                if at > now:
                    shut[provider] = at
        return shut

    def added(self, provider: str) -> None:
        """A job of `provider` is in flight (dispatched, or found so at activation)."""
        self.in_flight[provider] = self.in_flight.get(provider, 0) + 1

    def ended(self, provider: str) -> None:
        left = self.in_flight.get(provider, 0) - 1
        if left > 0:
            self.in_flight[provider] = left
        else:
            self.in_flight.pop(provider, None)

    def status(self, meta: _Meta, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for provider in sorted(set(self.limits) | set(self.in_flight) | set(meta.pauses)):
            until, reason = self.pause_of(meta, provider)
            out[provider] = {
                "inFlight": self.in_flight.get(provider, 0),
                "maxConcurrency": self.caps.get(provider, 0),
                "rateLimitPerMinute": self.limits.get(provider, 0),
                "pausedUntil": until if until > now else None,
                "pausedReason": (reason or None) if until > now else None,
            }
        return out
