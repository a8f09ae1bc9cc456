"""Inline videos (Vertex's `bytesBase64Encoded`) decoded a slice at a time.

The poll's JSON text is decoded once into a str (the base64); the video's bytes are never
held whole: each chunk is decoded from its own slice of the text, so the peak is the text
plus one chunk, not text + bytes + copies.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterator

from genqueue.errors import ProviderError

__all__ = ["inline_chunks"]


def inline_chunks(data_b64: str, chunk_size: int) -> Iterator[bytes]:
    """The decoded bytes in chunks of about `chunk_size` (slices of 4 base64 characters)."""
    step = max(4, (chunk_size // 3) * 4)
    for offset in range(0, len(data_b64), step):
        piece = data_b64[offset : offset + step]
        try:
            yield binascii.a2b_base64(piece, strict_mode=True)
        except (binascii.Error, ValueError):
            raise ProviderError(
                "Veo returned an inline video that is not valid base64",
                retryable=False,
                code="malformed_video",
            ) from None
