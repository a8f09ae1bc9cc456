"""FileCommitter: files finishing together are synced and renamed into place as one group."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from genqueue.storage import filesync
from genqueue.storage.filesync import FileCommitter, open_temp


class CountingSync:
    """Stands in for syncfs(2): counts the calls and checks the fd is a real open file."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fd: int) -> None:
        os.fstat(fd)
        self.calls += 1


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".*.tmp"))


@pytest.mark.parametrize("kind", ["syncfs", "fsync"])
def test_files_finishing_together_are_committed_as_one_group(tmp_path: Path, kind: str) -> None:
    sync = CountingSync() if kind == "syncfs" else None
    committer = FileCommitter(syncfs=sync, min_group=2)
    paths = [tmp_path / f"user{i % 3}" / f"video{i}.mp4" for i in range(50)]

    async def scenario() -> None:
        big = open_temp(paths[0])  # one file already partly written, as a long video is
        big[0].write(b"head-")
        await asyncio.gather(
            committer.commit(paths[0], b"tail", big),
            *(committer.commit(p, f"video {i}".encode()) for i, p in enumerate(paths) if i),
        )

    asyncio.run(scenario())
    assert paths[0].read_bytes() == b"head-tail"
    assert all(p.read_bytes() == f"video {i}".encode() for i, p in enumerate(paths) if i)
    assert leftovers(tmp_path) == []
    assert oct(paths[1].stat().st_mode & 0o777) == "0o644"
    if sync is not None:
        # The 50 arrive before the first group starts, so they make one group: two syncfs
        # calls (data, then renames), not two per file.
        assert sync.calls == 2, sync.calls


def test_a_small_group_syncs_file_by_file(tmp_path: Path) -> None:
    sync = CountingSync()
    committer = FileCommitter(syncfs=sync, min_group=16)
    paths = [tmp_path / f"v{i}.mp4" for i in range(3)]

    async def scenario() -> None:
        await asyncio.gather(*(committer.commit(p, b"small") for p in paths))

    asyncio.run(scenario())
    assert all(p.read_bytes() == b"small" for p in paths)
    assert sync.calls == 0  # a light load never flushes the rest of the filesystem


def test_a_file_that_cannot_be_renamed_fails_alone(tmp_path: Path) -> None:
    committer = FileCommitter(syncfs=CountingSync(), min_group=2)
    good = tmp_path / "ok" / "a.mp4"
    blocked = tmp_path / "taken" / "b.mp4"
    blocked.mkdir(parents=True)  # a folder where the file should go: the rename fails

    async def scenario() -> list[BaseException | None]:
        results = await asyncio.gather(
            committer.commit(good, b"fine"),
            committer.commit(blocked, b"no"),
            return_exceptions=True,
        )
        return list(results)  # type: ignore[arg-type]

    ok, failed = asyncio.run(scenario())
    assert ok is None and good.read_bytes() == b"fine"
    assert isinstance(failed, OSError)
    assert leftovers(tmp_path) == []  # the failed one's temporary file is gone too


def test_a_failed_sync_fails_the_whole_group_and_keeps_nothing(tmp_path: Path) -> None:
    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    committer = FileCommitter(syncfs=broken, min_group=2)
    paths = [tmp_path / f"v{i}.mp4" for i in range(3)]

    async def scenario() -> list[BaseException | None]:
        coros = (committer.commit(p, b"x") for p in paths)
        return list(await asyncio.gather(*coros, return_exceptions=True))  # type: ignore[arg-type]

    results = asyncio.run(scenario())
    assert all(isinstance(r, OSError) for r in results), results
    assert not any(p.exists() for p in paths)  # never renamed into place unsynced
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(filesync._SYNCFS is None, reason="no syncfs(2) in this C library")
def test_the_real_syncfs_is_found_and_callable(tmp_path: Path) -> None:
    assert filesync._SYNCFS is not None
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        filesync._SYNCFS(fd)
    finally:
        os.close(fd)
