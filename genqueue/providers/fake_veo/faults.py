"""The fake's fault controls: what a test arms (in this process as methods, from another
over `POST /_fake/faults` as a FaultControls body) and the fake consumes, in order.

`{"fail_starts" | "fail_polls" | "fail_downloads": {"status": 500, "count": 1,
"retry_after_s": null, "html": false, "reason": null, "quota": null}}` queue failures
(`quota`: "minute" or "day" makes a 429 Google's quota answer for that window: a per-minute
one with RetryInfo, a per-day one with a QuotaFailure and no RetryInfo; downloads take
`status` and `count` only), `"hang_starts" | "hang_polls": bool`, `"malformed_json_next":
bool` (the next start or poll answers 200 with JSON cut short; a start creates its operation
first, as Google would have), `"cut_download": bool` (every download, while true),
`"cut_downloads": N` (the next N),
`"audio_blocks": N` (the next N operations started end blocked by the audio filter, as
Google's does at random), `"rate_limit_per_minute": N`, `"requests_per_day": N` (accepted
starts a clock day allows before per-day 429s; 0 means no limit), `"latency_s": S`,
`"release": true` (hanging requests answer 503 now), `"clear": true` (disarm everything
first, releasing any hang).
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

__all__ = ["Failure", "FakeVeoControls", "FaultControls", "FaultSpec"]


@dataclass
class Failure:
    """One queued failure: the next call answers `status`."""

    status: int
    retry_after_s: float | None = None
    html: bool = False
    reason: str | None = None
    quota: Literal["minute", "day"] | None = None


@dataclass
class _Queues:
    starts: collections.deque[Failure] = field(default_factory=collections.deque)
    polls: collections.deque[Failure] = field(default_factory=collections.deque)
    downloads: collections.deque[Failure] = field(default_factory=collections.deque)


class FaultSpec(msgspec.Struct, forbid_unknown_fields=True):
    """Failures to queue: the next `count` calls answer `status` (`POST /_fake/faults`)."""

    status: int = 500
    count: int = 1
    retry_after_s: float | None = None
    html: bool = False
    reason: str | None = None
    quota: Literal["minute", "day"] | None = None


class FaultControls(msgspec.Struct, forbid_unknown_fields=True):
    """The body of `POST /_fake/faults`: each key left out (None) leaves its control alone."""

    fail_starts: FaultSpec | None = None
    fail_polls: FaultSpec | None = None
    fail_downloads: FaultSpec | None = None
    hang_starts: bool | None = None
    hang_polls: bool | None = None
    malformed_json_next: bool | None = None
    cut_download: bool | None = None
    cut_downloads: int | None = None
    audio_blocks: int | None = None
    rate_limit_per_minute: int | None = None
    requests_per_day: int | None = None
    latency_s: float | None = None
    release: bool = False
    clear: bool = False


class FakeVeoControls:
    """Fault state and the methods that arm it; FakeVeo adds the HTTP that consumes it."""

    latency_s: float
    rate_limit_per_minute: int
    requests_per_day: int

    def __init__(self) -> None:
        self.hang_starts = self.hang_polls = False
        self.malformed_json_next = False
        self.cut_download = False
        self.cut_downloads_left = 0  # the next N downloads are cut (see cut_downloads)
        self.audio_blocks_left = 0  # the next N operations end blocked by the audio filter
        self.faults = _Queues()
        self._released: asyncio.Event | None = None

    def fail_starts(
        self,
        status: int = 500,
        count: int = 1,
        retry_after_s: float | None = None,
        *,
        html: bool = False,
        reason: str | None = None,
        quota: Literal["minute", "day"] | None = None,
    ) -> None:
        """Answer the next `count` start requests with `status` (Google's error shape)."""
        self.faults.starts.extend([Failure(status, retry_after_s, html, reason, quota)] * count)

    def fail_polls(
        self,
        status: int = 500,
        count: int = 1,
        retry_after_s: float | None = None,
        *,
        html: bool = False,
        reason: str | None = None,
    ) -> None:
        """Answer the next `count` polls with `status`."""
        self.faults.polls.extend([Failure(status, retry_after_s, html, reason)] * count)

    def fail_downloads(self, status: int = 500, count: int = 1) -> None:
        """Answer the next `count` downloads with `status`."""
        self.faults.downloads.extend([Failure(status)] * count)

    def cut_downloads(self, count: int = 1) -> None:
        """Cut the next `count` downloads half-way (the connection drops mid-body)."""
        self.cut_downloads_left += count

    def audio_blocks(self, count: int = 1) -> None:
        """End the next `count` operations started blocked by the audio filter."""
        self.audio_blocks_left += count

    def release(self) -> None:
        """Let every hanging request go (each answers 503); called when the server stops."""
        if self._released is None:
            self._released = asyncio.Event()
        self._released.set()

    async def wait_released(self) -> None:
        if self._released is None:
            self._released = asyncio.Event()
        await self._released.wait()

    def hang(self, *, starts: bool | None = None, polls: bool | None = None) -> None:
        """Make starts and / or polls hang (until `release`), or stop hanging new ones."""
        if (starts or polls) and self._released is not None and self._released.is_set():
            self._released = None  # released before: hang anew
        if starts is not None:
            self.hang_starts = starts
        if polls is not None:
            self.hang_polls = polls

    def clear_faults(self) -> None:
        """Disarm every fault control and let hanging requests go."""
        self.faults = _Queues()
        self.hang_starts = self.hang_polls = False
        self.malformed_json_next = self.cut_download = False
        self.cut_downloads_left = self.audio_blocks_left = 0
        self.release()

    def apply(self, controls: FaultControls) -> None:
        """Set the controls `controls` names (what `POST /_fake/faults` does)."""
        if controls.clear:
            self.clear_faults()
        if (spec := controls.fail_starts) is not None:
            self.fail_starts(
                spec.status,
                spec.count,
                spec.retry_after_s,
                html=spec.html,
                reason=spec.reason,
                quota=spec.quota,
            )
        if (spec := controls.fail_polls) is not None:
            self.fail_polls(
                spec.status, spec.count, spec.retry_after_s, html=spec.html, reason=spec.reason
            )
        if (spec := controls.fail_downloads) is not None:
            self.fail_downloads(spec.status, spec.count)
        self.hang(starts=controls.hang_starts, polls=controls.hang_polls)
        self._apply_settings(controls)
        if controls.release:
            self.release()

    def _apply_settings(self, controls: FaultControls) -> None:
        if controls.malformed_json_next is not None:
            self.malformed_json_next = controls.malformed_json_next
        if controls.cut_download is not None:
            self.cut_download = controls.cut_download
        if controls.cut_downloads is not None:
            self.cut_downloads(controls.cut_downloads)
        if controls.audio_blocks is not None:
            self.audio_blocks(controls.audio_blocks)
        if controls.rate_limit_per_minute is not None:
            self.rate_limit_per_minute = controls.rate_limit_per_minute
        if controls.requests_per_day is not None:
            self.requests_per_day = controls.requests_per_day
        if controls.latency_s is not None:
            self.latency_s = controls.latency_s

    def armed(self) -> dict[str, Any]:
        """The fault controls now armed (what `/_fake/stats` and `/_fake/faults` show)."""
        return {
            "fail_starts": len(self.faults.starts),
            "fail_polls": len(self.faults.polls),
            "fail_downloads": len(self.faults.downloads),
            "hang_starts": self.hang_starts,
            "hang_polls": self.hang_polls,
            "malformed_json_next": self.malformed_json_next,
            "cut_download": self.cut_download,
            "cut_downloads": self.cut_downloads_left,
            "audio_blocks": self.audio_blocks_left,
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "requests_per_day": self.requests_per_day,
            "latency_s": self.latency_s,
        }
