"""`LocalStore`: videos as files in a folder, `root/videos/{user_id}/{name}.mp4`.

Each video is written to a temporary file beside its final name, synced and renamed into
place, so a reader never sees half a video and a failed upload leaves the previous one
intact. Videos that finish together are synced together (`filesync.FileCommitter`).
Local videos are `private`: served only at signed URLs (storage/videourls.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar

from genqueue.errors import StorageError
from genqueue.storage.filesync import FileCommitter, open_temp
from genqueue.storage.video_store import (
    BLOCK_BYTES,
    StoredVideo,
    checked_key,
    public_url,
    video_key,
)

__all__ = ["LocalStore"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class LocalStore:
    """Videos as files under `root`; serve `root / "videos"` at `/videos/` for `url` to work."""

    def __init__(self, root: Path, public_base_url: str) -> None:
        self.root = Path(root)
        self.public_base_url = public_base_url
        self._files = FileCommitter()

    async def start(self) -> None:
        try:
            await asyncio.to_thread((self.root / "videos").mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the video folder under {self.root}: {exc}") from exc

    async def close(self) -> None:
        return None

    async def put_stream(
        self,
        user_id: str,
        name: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str = "video/mp4",
    ) -> StoredVideo:
        key = video_key(user_id, name)
        path = self.root / key
        # Up to a block stays in memory; a video longer than that goes to a temporary file
        # block by block, each write in a worker thread. The last block is written by the
        # committer, in the thread call that syncs a group of videos.
        opened: tuple[BinaryIO, Path] | None = None
        block = bytearray()
        size = 0
        try:
            async for chunk in chunks:
                block += chunk
                size += len(chunk)
                if len(block) >= BLOCK_BYTES:
                    if opened is None:
                        opened = await _in_thread(f"create a file for {key}", open_temp, path)
                    await _in_thread(f"write {key}", opened[0].write, block)
                    block = bytearray()
        except BaseException:
            if opened is not None:
                opened[0].close()
                opened[1].unlink(missing_ok=True)
            raise
        try:  # from here the committer owns the file (and removes it if the commit fails)
            await self._files.commit(path, bytes(block), opened)
        except OSError as exc:
            raise StorageError(f"cannot store {key}: {exc}") from exc
        url = public_url(self.public_base_url, key)
        return StoredVideo(
            key=key, url=url, size_bytes=size, content_type=content_type, private=True
        )

    async def open_read(self, key: str) -> AsyncIterator[bytes]:
        path = self.root / checked_key(key)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise StorageError(f"no video at {key}") from None
        except OSError as exc:
            raise StorageError(f"cannot open {key}: {exc}") from exc
        try:
            while block := await _in_thread(f"read {key}", handle.read, BLOCK_BYTES):
                yield block
        finally:
            handle.close()

    async def delete(self, key: str) -> None:
        path = self.root / checked_key(key)
        await _in_thread(f"delete {key}", path.unlink, missing_ok=True)

    async def exists(self, key: str) -> bool:
        path = self.root / checked_key(key)
        return await _in_thread(f"look up {key}", path.is_file)


async def _in_thread(
    what: str, func: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """Run blocking file work off the event loop; an OSError becomes a StorageError."""
    try:
        return await asyncio.to_thread(func, *args, **kwargs)
    except OSError as exc:
        raise StorageError(f"cannot {what}: {exc}") from exc
