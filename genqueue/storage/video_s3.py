"""`S3Store`: videos in an S3-compatible bucket (R2, S3, MinIO), through aiobotocore.

A video streams in one part of `part_size` bytes in memory at a time: a single PUT when
it fits in one part, else a multipart upload, aborted on any failure. `url` is public
(`public_base_url`) or presigned.
"""

from __future__ import annotations

import io
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack, aclosing
from typing import Any, NamedTuple

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import ClientError

from genqueue.errors import StorageError
from genqueue.storage.video_store import (
    BLOCK_BYTES,
    StoredVideo,
    checked_key,
    public_url,
    video_key,
)

__all__ = ["MIN_PART_SIZE", "S3Store"]

MIN_PART_SIZE = 5 * 1024 * 1024
"""S3 and R2 refuse multipart parts smaller than this, except the last one."""

_MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600  # the SigV4 limit
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class _Part(NamedTuple):
    body: io.BytesIO
    size: int


async def _parts(chunks: AsyncIterable[bytes], part_size: int) -> AsyncGenerator[_Part, None]:
    """Regroup `chunks` into parts of at least `part_size` bytes; only the last may be shorter.

    A part is a BytesIO (seekable, so botocore can hash and retry it, and aiohttp streams it
    instead of warning about a large bytes body). At most one part is buffered here.
    """
    buffer = io.BytesIO()
    async for chunk in chunks:
        buffer.write(chunk)
        if buffer.tell() >= part_size:
            size = buffer.tell()
            buffer.seek(0)
            yield _Part(buffer, size)
            buffer = io.BytesIO()
    if buffer.tell():
        size = buffer.tell()
        buffer.seek(0)
        yield _Part(buffer, size)


def _describe(exc: BaseException) -> str:
    """A failure's type and message: botocore's never contain the secret key."""
    return f"{type(exc).__name__}: {exc}"


class S3Store:
    """Videos in an S3-compatible bucket, uploaded part by part; `url` is public or presigned.

    Use `region="auto"` for Cloudflare R2. Credentials left at None come from botocore's
    usual chain (environment, config files).
    """

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None = None,
        region: str = "auto",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        public_base_url: str | None = None,
        presign_expiry_s: int = 3600,
        part_size: int = 8 * 1024 * 1024,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes, not {part_size}")
        if not 1 <= presign_expiry_s <= _MAX_PRESIGN_EXPIRY_S:
            raise ValueError(f"presign_expiry_s must be 1-{_MAX_PRESIGN_EXPIRY_S} seconds")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.public_base_url = public_base_url
        self.presign_expiry_s = presign_expiry_s
        self.part_size = part_size
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    async def start(self) -> None:
        """Open the one S3 client (and its connection pool) this store uses."""
        if self._client is not None:
            return
        stack = AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(self._create_client())
        except Exception as exc:
            await stack.aclose()
            raise StorageError(
                f"cannot open an S3 client for {self.bucket}: {_describe(exc)}"
            ) from exc
        self._stack = stack

    def _create_client(self) -> Any:
        config = AioConfig(
            signature_version="s3v4",
            # MinIO and moto want path-style URLs; R2 accepts both.
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            # botocore's default CRC checksums trip some S3-compatible stores.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "max_attempts": 3},
        )
        return AioSession().create_client(
            "s3",
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self._access_key_id,
            aws_secret_access_key=self._secret_access_key,
            config=config,
        )

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def _require_client(self) -> Any:
        if self._client is None:
            raise StorageError("S3Store is not started (call start() first)")
        return self._client

    async def _call(self, operation: str, key: str, **params: Any) -> Any:
        """One S3 call on `key`; any failure of it becomes a StorageError."""
        method = getattr(self._require_client(), operation)
        try:
            return await method(Bucket=self.bucket, Key=key, **params)
        except Exception as exc:
            raise StorageError(
                f"S3 {operation} of {key} in bucket {self.bucket} failed: {_describe(exc)}"
            ) from exc

    async def put_stream(
        self,
        user_id: str,
        name: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str = "video/mp4",
    ) -> StoredVideo:
        key = video_key(user_id, name)
        self._require_client()
        upload = _Upload(self, key, content_type)
        try:
            size = await upload.send(_parts(chunks, self.part_size))
        except BaseException as exc:
            await upload.abort(exc)
            raise
        return await self._stored(key, size, content_type)

    async def _stored(self, key: str, size: int, content_type: str) -> StoredVideo:
        url = await self._url(key)
        return StoredVideo(key=key, url=url, size_bytes=size, content_type=content_type)

    async def _url(self, key: str) -> str:
        if self.public_base_url:
            return public_url(self.public_base_url, key)
        try:
            url: str = await self._require_client().generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=self.presign_expiry_s,
            )
        except Exception as exc:
            raise StorageError(f"cannot presign a URL for {key}: {_describe(exc)}") from exc
        return url

    async def open_read(self, key: str) -> AsyncIterator[bytes]:
        response = await self._call("get_object", checked_key(key))
        async with response["Body"] as body:  # hands the connection back to the pool
            while block := await self._read(body, key):
                yield block

    async def _read(self, body: Any, key: str) -> bytes:
        try:
            block: bytes = await body.read(BLOCK_BYTES)
        except Exception as exc:
            raise StorageError(f"reading {key} from S3 failed: {_describe(exc)}") from exc
        return block

    async def delete(self, key: str) -> None:
        await self._call("delete_object", checked_key(key))

    async def exists(self, key: str) -> bool:
        checked_key(key)
        try:
            await self._call("head_object", key)
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError):
                code = str(cause.response.get("Error", {}).get("Code"))
                if code in _MISSING_CODES:
                    return False
            raise
        return True


class _Upload:
    """One video upload: a single PUT when it fits in one part, else a multipart upload
    started on the first full part, then completed, or aborted on any failure."""

    def __init__(self, store: S3Store, key: str, content_type: str) -> None:
        self.store = store
        self.key = key
        self.content_type = content_type
        self.upload_id: str | None = None
        self.etags: list[dict[str, Any]] = []
        self.size = 0

    async def send(self, parts: AsyncGenerator[_Part, None]) -> int:
        """Upload every part; returns the video's size in bytes."""
        async with aclosing(parts):
            async for part in parts:
                if self.upload_id is None and part.size < self.store.part_size:
                    await self._put(part.body)  # the last part is the first: one plain PUT
                    return part.size
                await self.add(part)
                del part  # the next part's buffer replaces this one instead of joining it
        await self.complete()
        return self.size

    async def _put(self, body: io.BytesIO | bytes) -> None:
        await self.store._call("put_object", self.key, Body=body, ContentType=self.content_type)

    async def add(self, part: _Part) -> None:
        if self.upload_id is None:
            created = await self.store._call(
                "create_multipart_upload", self.key, ContentType=self.content_type
            )
            self.upload_id = str(created["UploadId"])
        number = len(self.etags) + 1
        uploaded = await self.store._call(
            "upload_part", self.key, UploadId=self.upload_id, PartNumber=number, Body=part.body
        )
        self.etags.append({"PartNumber": number, "ETag": uploaded["ETag"]})
        self.size += part.size

    async def complete(self) -> None:
        if self.upload_id is None:  # an empty video
            await self._put(b"")
            return
        await self.store._call(
            "complete_multipart_upload",
            self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self.etags},
        )
        self.upload_id = None

    async def abort(self, reason: BaseException) -> None:
        """Abort an unfinished upload; if even that fails, say so on `reason`."""
        if self.upload_id is None:
            return
        upload_id, self.upload_id = self.upload_id, None
        try:
            await self.store._call("abort_multipart_upload", self.key, UploadId=upload_id)
        except StorageError as exc:
            reason.add_note(f"and aborting the multipart upload {upload_id} failed: {exc}")
