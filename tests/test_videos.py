"""One contract suite for every VideoStore: a folder, and S3 on moto's server over HTTP.

moto runs in a child process (ThreadedMotoServer on loopback), not in this one: moto keeps
whole objects in memory, which would drown the memory measurement of a streamed upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiobotocore.session import AioSession

from genqueue.errors import StorageError
from genqueue.storage.videos import (
    MIN_PART_SIZE,
    LocalStore,
    S3Store,
    StoredVideo,
    VideoStore,
    video_key,
)

T = TypeVar("T")
MiB = 1024 * 1024
PART_SIZE = MIN_PART_SIZE  # the smallest part S3 (and moto) allow
ACCESS_KEY_ID = "AKIDTESTINGONLY"
SECRET_ACCESS_KEY = "not-a-real-secret-2f7c9e"
LOCAL_BASE_URL = "http://127.0.0.1:8787"


class Harness:
    """A started store of one backend, its event loop, and a look at what it left behind."""

    def __init__(self, kind: str, runner: asyncio.Runner, tmp_path: Path, endpoint: str) -> None:
        self.kind = kind
        self.runner = runner
        self.root = tmp_path / "media"
        self.endpoint = endpoint
        self.bucket = f"videos-{uuid.uuid4().hex[:12]}"
        self.stack = AsyncExitStack()
        self.admin: Any = None  # an S3 client of its own, for S3
        self.store: VideoStore

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def open_store(self, **overrides: Any) -> VideoStore:
        """A started store of this harness's backend, closed at teardown."""
        store: VideoStore
        if self.kind == "local":
            store = LocalStore(self.root, overrides.get("public_base_url", LOCAL_BASE_URL))
        else:
            settings: dict[str, Any] = {
                "bucket": self.bucket,
                "endpoint_url": self.endpoint,
                "region": "us-east-1",
                "access_key_id": ACCESS_KEY_ID,
                "secret_access_key": SECRET_ACCESS_KEY,
                "part_size": PART_SIZE,
            }
            store = S3Store(**(settings | overrides))
        self.run(store.start())
        self.stack.push_async_callback(store.close)
        return store

    async def open_admin(self) -> None:
        """A plain S3 client to create the bucket and list what the store left."""
        self.admin = await self.stack.enter_async_context(
            AioSession().create_client(
                "s3",
                region_name="us-east-1",
                endpoint_url=self.endpoint,
                aws_access_key_id=ACCESS_KEY_ID,
                aws_secret_access_key=SECRET_ACCESS_KEY,
            )
        )
        await self.admin.create_bucket(Bucket=self.bucket)

    async def listing(self) -> list[str]:
        """Everything stored: object keys and open uploads (S3), or every file (local)."""
        if self.kind == "local":
            return sorted(
                p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()
            )
        objects = await self.admin.list_objects_v2(Bucket=self.bucket)
        uploads = await self.admin.list_multipart_uploads(Bucket=self.bucket)
        return sorted(
            [o["Key"] for o in objects.get("Contents", [])]
            + [f"upload:{u['Key']}" for u in uploads.get("Uploads", [])]
        )


@contextlib.contextmanager
def open_harness(kind: str, tmp_path: Path, endpoint: str) -> Iterator[Harness]:
    with asyncio.Runner() as runner:
        h = Harness(kind, runner, tmp_path, endpoint)
        if h.kind == "s3":
            runner.run(h.open_admin())  # creates the bucket the store writes to
        h.store = h.open_store()
        try:
            yield h
        finally:
            runner.run(h.stack.aclose())


@pytest.fixture(params=["local", "s3"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    endpoint = request.getfixturevalue("moto_endpoint") if request.param == "s3" else ""
    with open_harness(request.param, tmp_path, endpoint) as h:
        yield h


@pytest.fixture
def s3(tmp_path: Path, moto_endpoint: str) -> Iterator[Harness]:
    """The S3 store alone, for what only S3 has (presigned URLs)."""
    with open_harness("s3", tmp_path, moto_endpoint) as h:
        yield h


async def chunks_of(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def generated(total: int, chunk_size: int, digest: Any) -> AsyncIterator[bytes]:
    """`total` pseudo-random bytes, made chunk by chunk and never held whole."""
    rng = random.Random(7)
    sent = 0
    while sent < total:
        chunk = rng.randbytes(min(chunk_size, total - sent))
        digest.update(chunk)
        sent += len(chunk)
        yield chunk


async def read_all(store: VideoStore, key: str) -> bytes:
    return b"".join([block async for block in store.open_read(key)])


async def hash_stream(store: VideoStore, key: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    async for block in store.open_read(key):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def test_put_then_read_back(harness: Harness) -> None:
    data = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 100
    stored = harness.run(
        harness.store.put_stream("user-1", "job-1", chunks_of(data[:10], data[10:]))
    )
    assert isinstance(stored, StoredVideo)
    assert stored.size_bytes == len(data)
    assert harness.run(read_all(harness.store, stored.key)) == data


def test_key_layout_and_content_type(harness: Harness) -> None:
    stored = harness.run(harness.store.put_stream("user_1.a:b", "job-9", chunks_of(b"v")))
    assert stored.key == "videos/user_1.a:b/job-9.mp4" == video_key("user_1.a:b", "job-9")
    assert stored.content_type == "video/mp4"
    assert harness.run(harness.listing()) == [stored.key]
    if harness.kind == "s3":
        head = harness.run(harness.admin.head_object(Bucket=harness.bucket, Key=stored.key))
        assert head["ContentType"] == "video/mp4"
    else:
        assert (harness.root / "videos" / "user_1.a:b" / "job-9.mp4").read_bytes() == b"v"


def test_re_put_replaces(harness: Harness) -> None:
    store = harness.store
    harness.run(store.put_stream("u", "j", chunks_of(b"first version, longer")))
    stored = harness.run(store.put_stream("u", "j", chunks_of(b"second")))
    assert stored.size_bytes == len(b"second")
    assert harness.run(read_all(store, stored.key)) == b"second"
    assert harness.run(harness.listing()) == ["videos/u/j.mp4"]


BAD_IDS = ["", ".", "..", "...", "../x", "a/b", "a\\b", "x y", "é", "a\x00", "a\n", "x" * 129]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_refused(harness: Harness, bad: str) -> None:
    store = harness.store
    with pytest.raises(StorageError):
        harness.run(store.put_stream(bad, "job", chunks_of(b"x")))
    with pytest.raises(StorageError):
        harness.run(store.put_stream("user", bad, chunks_of(b"x")))
    assert harness.run(harness.listing()) == []


BAD_KEYS = ["videos/../secret.mp4", "videos/u/../../x.mp4", "other/u/j.mp4", "videos/u/j.mov", ""]


@pytest.mark.parametrize("bad", BAD_KEYS)
def test_bad_keys_refused(harness: Harness, bad: str) -> None:
    store = harness.store
    with pytest.raises(StorageError):
        harness.run(store.exists(bad))
    with pytest.raises(StorageError):
        harness.run(store.delete(bad))
    with pytest.raises(StorageError):
        harness.run(read_all(store, bad))


def test_delete(harness: Harness) -> None:
    store = harness.store
    key = harness.run(store.put_stream("u", "gone", chunks_of(b"bye"))).key
    assert harness.run(store.exists(key)) is True
    harness.run(store.delete(key))
    assert harness.run(store.exists(key)) is False
    harness.run(store.delete(key))  # deleting twice is fine
    with pytest.raises(StorageError):
        harness.run(read_all(store, key))
    assert harness.run(harness.listing()) == []


def test_large_video_streams_in_flat_memory(harness: Harness) -> None:
    total = 64 * MiB
    sent = hashlib.sha256()

    async def scenario() -> tuple[StoredVideo, tuple[str, int], int]:
        tracemalloc.start()
        try:
            stored = await harness.store.put_stream("u", "big", generated(total, MiB + 17, sent))
            read_back = await hash_stream(harness.store, stored.key)
            return stored, read_back, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    stored, (digest, size), peak = harness.run(scenario())
    assert stored.size_bytes == size == total
    assert digest == sent.hexdigest()
    assert peak < 3 * PART_SIZE, f"peak {peak / MiB:.1f} MiB"
    assert harness.run(harness.listing()) == ["videos/u/big.mp4"]
    if harness.kind == "s3":  # it went up in parts: a multipart ETag ends in "-<parts>"
        head = harness.run(harness.admin.head_object(Bucket=harness.bucket, Key=stored.key))
        assert head["ETag"].strip('"').endswith("-13")


def test_failure_mid_stream_leaves_nothing(harness: Harness) -> None:
    store = harness.store
    harness.run(store.put_stream("u", "j", chunks_of(b"the good version")))

    async def broken() -> AsyncIterator[bytes]:
        for _ in range(2 * PART_SIZE // MiB + 1):  # past the first parts of a multipart upload
            yield b"\xab" * MiB
        raise RuntimeError("the provider's stream broke")

    with pytest.raises(RuntimeError, match="stream broke"):
        harness.run(store.put_stream("u", "j", broken()))
    assert harness.run(harness.listing()) == ["videos/u/j.mp4"]  # no temp file, no open upload
    assert harness.run(read_all(store, "videos/u/j.mp4")) == b"the good version"
    harness.run(store.put_stream("u", "j", chunks_of(b"retried")))  # a retry just works
    assert harness.run(read_all(store, "videos/u/j.mp4")) == b"retried"


def test_storage_failure_is_a_storage_error(harness: Harness) -> None:
    if harness.kind == "s3":
        store = harness.open_store(bucket="no-such-bucket")
    else:
        (harness.root / "videos").mkdir(parents=True, exist_ok=True)
        (harness.root / "videos" / "blocked").write_bytes(b"a file where a folder should be")
        store = harness.store
    with pytest.raises(StorageError) as caught:
        harness.run(store.put_stream("blocked", "j", chunks_of(b"x" * (PART_SIZE + 1))))
    assert SECRET_ACCESS_KEY not in str(caught.value)
    assert "blocked" in str(caught.value)  # names what it was doing


def test_public_base_url_used_when_set(harness: Harness) -> None:
    store = harness.open_store(public_base_url="http://127.0.0.1:8787/")
    stored = harness.run(store.put_stream("u", "j", chunks_of(b"x")))
    assert stored.url == "http://127.0.0.1:8787/videos/u/j.mp4"


def test_presigned_url_is_fetchable(s3: Harness) -> None:
    data = b"presigned bytes" * 1000
    stored = s3.run(s3.store.put_stream("u", "j", chunks_of(data)))
    assert stored.url.startswith(f"{s3.endpoint}/{s3.bucket}/videos/u/j.mp4?")
    assert "X-Amz-Signature=" in stored.url and "X-Amz-Expires=3600" in stored.url
    assert SECRET_ACCESS_KEY not in stored.url

    async def fetch() -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as session, session.get(stored.url) as response:
            return response.status, await response.read()

    assert s3.run(fetch()) == (200, data)


def test_s3_store_must_be_started() -> None:
    store = S3Store(bucket="b", endpoint_url="http://127.0.0.1:9", region="us-east-1")
    with pytest.raises(StorageError, match="not started"):
        asyncio.run(store.put_stream("u", "j", chunks_of(b"x")))
    with pytest.raises(ValueError):
        S3Store(bucket="b", part_size=MIN_PART_SIZE - 1)
