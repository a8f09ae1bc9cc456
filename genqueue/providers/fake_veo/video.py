"""The fake's video: a real, tiny H.264 MP4 that browsers play, padded to any size.

`video.mp4` beside this file is made by `tools/make_fake_video.py` (PyAV): 96x54, 8 s,
H.264 Constrained Baseline, the `moov` box before the `mdat` ("faststart"). A video of
`total_size` bytes is that file followed by one top-level `free` box filling the rest
(ISO/IEC 14496-12 §8.1.2: a `free` box's contents are irrelevant and may be skipped), so a
player still plays it and a streaming test can ask for gigabytes that are never held whole.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from functools import cache
from importlib import resources

__all__ = ["MIN_VIDEO_SIZE", "build_mp4", "clip", "iter_mp4"]

_FILL = bytes(range(256)) * 256  # 64 KiB of a recognisable pattern


@cache
def clip() -> bytes:
    """The playable clip itself (a few KB), without padding."""
    return resources.files(__package__).joinpath("video.mp4").read_bytes()


MIN_VIDEO_SIZE = len(clip())


def _free_header(size: int) -> bytes:
    """The header of a `free` box of `size` bytes in all (64-bit size past 4 GiB)."""
    if size < 2**32:
        return struct.pack(">I", size) + b"free"
    return struct.pack(">I", 1) + b"free" + struct.pack(">Q", size)


def _check(total_size: int) -> None:
    gap = total_size - MIN_VIDEO_SIZE
    if gap < 0 or 0 < gap < 8:
        raise ValueError(
            f"video_size must be {MIN_VIDEO_SIZE} bytes (the bare clip) or at least "
            f"{MIN_VIDEO_SIZE + 8}, not {total_size}"
        )


def iter_mp4(total_size: int) -> Iterator[bytes]:
    """The fake's video, `total_size` bytes, in chunks of at most 64 KiB (never held whole)."""
    _check(total_size)
    yield clip()
    left = total_size - MIN_VIDEO_SIZE
    if not left:
        return
    header = _free_header(left)
    yield header
    left -= len(header)
    while left > 0:
        chunk = _FILL[: min(left, len(_FILL))]
        left -= len(chunk)
        yield chunk


def build_mp4(total_size: int) -> bytes:
    """The whole video in memory: only for small sizes."""
    return b"".join(iter_mp4(total_size))
