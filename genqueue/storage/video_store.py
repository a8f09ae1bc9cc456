"""What a video store is: the `VideoStore` protocol, the `StoredVideo` it returns, and
the keys videos live at.

Keys are `videos/{user_id}/{name}.mp4`; the GenerationActor names a video with a random
token kept in the job's checkpoint (never the job id, which a client may choose), so a name
cannot be guessed. Putting the same name again replaces the video, so an upload retried
after a crash is harmless. Failures of a store raise `StorageError`; an exception raised
by the caller's own chunk iterator passes through unchanged (after the partial upload is
cleaned up), so the caller can tell its failures from the store's.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol

import msgspec

from genqueue.errors import StorageError
from genqueue.models import JOB_ID_PATTERN

__all__ = ["BLOCK_BYTES", "StoredVideo", "VideoStore", "checked_key", "public_url", "video_key"]

BLOCK_BYTES = 1024 * 1024
"""File writes and reads, and S3 body reads, go this much at a time."""

_ID = re.compile(JOB_ID_PATTERN)
_KEY = re.compile(r"videos/([^/]+)/([^/]+)\.mp4")


class StoredVideo(msgspec.Struct, frozen=True):
    """A stored video: its key, the URL a client fetches it from, its size and type."""

    key: str
    url: str
    size_bytes: int
    content_type: str = "video/mp4"
    private: bool = False  # served by this server at signed URLs only (`url` is unsigned)


class VideoStore(Protocol):
    """Where finished videos go. `start()` before use, `close()` after."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def put_stream(
        self,
        user_id: str,
        name: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str = "video/mp4",
    ) -> StoredVideo:
        """Store the video `chunks` make up at `videos/{user_id}/{name}.mp4`, replacing any
        earlier one."""
        ...

    def open_read(self, key: str) -> AsyncIterator[bytes]:
        """The stored bytes, in blocks (an async generator: wrap it in `aclosing` to stop early)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the video; deleting a missing one is not an error."""
        ...

    async def exists(self, key: str) -> bool: ...


def video_key(user_id: str, name: str) -> str:
    """The key of a video; raises StorageError for a name that could escape its folder."""
    for label, value in (("user_id", user_id), ("name", name)):
        if not _ID.fullmatch(value) or not value.strip("."):
            raise StorageError(
                f"{label} {value[:140]!r} must be 1-128 letters, digits, '-', '_', '.' or ':'"
                " and not only dots"
            )
    return f"videos/{user_id}/{name}.mp4"


def checked_key(key: str) -> str:
    """`key`, if it is a video key a store may read or delete; else StorageError."""
    match = _KEY.fullmatch(key)
    if match is None or video_key(*match.groups()) != key:
        raise StorageError(f"{key[:300]!r} is not a video key (videos/USER_ID/NAME.mp4)")
    return key


def public_url(base: str, key: str) -> str:
    return f"{base.rstrip('/')}/{key}"
