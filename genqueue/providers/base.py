"""The one interface every provider's client offers the GenerationActor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from genqueue.providers.veo.shapes import Operation, VideoParams, VideoRef

__all__ = ["ProviderClient"]


class ProviderClient(Protocol):
    """Start a paid generation (its operation name is the checkpoint), poll it, stream its
    videos; each failure a ProviderError whose `code` says what it means."""

    model: str

    async def start(self, prompt: str, params: VideoParams, *, model: str | None = None) -> str: ...

    async def poll(self, name: str) -> Operation: ...

    def download(self, video: VideoRef, chunk_size: int = ...) -> AsyncIterator[bytes]: ...
