"""Signed, expiring URLs for the videos this server keeps itself (the local store).

A local video is served only at `{url}?expires=UNIX_S&signature=SIG`, where SIG is the
HMAC-SHA256 (base64url, no padding) of `"{path}\\n{expires}"` (`path` the route's own
`/videos/{user}/{name}`, whatever prefix the public base URL puts before it: a proxy that
serves us under `/gq` strips it before the route checks the signature) under a secret generated
once per data directory (`video_url.key`, mode 0600). The URL a client sees is signed
afresh whenever the job is read (GET, list, events, a webhook at send time), valid for
`video_url_ttl_s` (rounded up to a whole minute, so reads within a minute agree), like S3's
presigned URLs. Anyone holding a current URL may fetch the video, and nobody else: file
names are random tokens, and an unsigned, expired or altered URL gets 403.

Videos in S3 keep the URLs the bucket gives (public, or presigned by S3Store).

Which results are signed: those whose store marked them `private` (the local store), and
results stored by versions before signing, recognised by their URL path
`/videos/{user_id}/{job_id}.mp4` when the store is local.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import math
import os
import secrets
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from genqueue.clock import Clock
from genqueue.errors import StorageError
from genqueue.models import Job, JobResult

__all__ = ["SECRET_FILE", "VideoUrls", "private_video_key", "stored_video_key"]

SECRET_FILE = "video_url.key"
_SECRET_BYTES = 32
_ROUND_S = 60


def private_video_key(job: Job, storage: str) -> str | None:
    """The store key of `job`'s video if this server serves it at signed URLs, else None."""
    result = job.result
    if result is None:
        return None
    if result.private and result.video_key:
        return result.video_key
    if result.video_key is None and storage == "local":  # a result of an older version
        legacy = f"/videos/{job.user_id}/{job.id}.mp4"
        if urlsplit(result.video_url).path == legacy:
            return legacy[1:]
    return None


def stored_video_key(job: Job, storage: str) -> str | None:
    """The store key of `job`'s video, wherever it is kept (for deleting it), or None."""
    if job.result is not None and job.result.video_key:
        return job.result.video_key
    return private_video_key(job, storage)


class VideoUrls:
    """Signs and checks the URLs of local videos; `present(job)` re-signs a job's result."""

    def __init__(self, secret: bytes, *, ttl_s: float, clock: Clock, storage: str = "local"):
        if len(secret) < 16:
            raise ValueError("the video URL secret must be at least 16 bytes")
        self._secret = secret
        self.ttl_s = ttl_s
        self.clock = clock
        self.storage = storage

    @classmethod
    def load(cls, data_dir: str | Path, **kw: object) -> VideoUrls:
        """With the secret of `data_dir`, generated (0600) on first use."""
        return cls(_secret(Path(data_dir) / SECRET_FILE), **kw)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"VideoUrls(ttl_s={self.ttl_s})"

    # -- signing ---------------------------------------------------------------------------

    def _mac(self, path: str, expires: int) -> str:
        digest = hmac.digest(self._secret, f"{path}\n{expires}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def sign(self, url: str) -> str:
        """`url` (of a local video, without a query) with a fresh expiry and signature."""
        base = url.split("?", 1)[0]
        expires = math.ceil((self.clock.now() + self.ttl_s) / _ROUND_S) * _ROUND_S
        path = _route_path(urlsplit(base).path)
        return f"{base}?expires={expires}&signature={self._mac(path, expires)}"

    def verify(self, path: str, expires: str | None, signature: str | None) -> bool:
        """Whether `signature` signs `path` until `expires`, and that is not past."""
        if not expires or not signature or len(expires) > 12:
            return False
        if not (expires.isascii() and expires.isdigit()):
            return False
        given = signature.encode("utf-8", "surrogateescape")  # any text: compared as bytes
        good = hmac.compare_digest(self._mac(path, int(expires)).encode("ascii"), given)
        return good and int(expires) >= self.clock.now()

    # -- jobs --------------------------------------------------------------------------------

    def result_url(self, job: Job) -> str | None:
        """The video URL a reader of `job` gets now: re-signed when it is ours to sign."""
        if job.result is None:
            return None
        if private_video_key(job, self.storage) is None:
            return job.result.video_url
        return self.sign(job.result.video_url)

    def present(self, job: Job) -> Job:
        """`job` with its result's URL as `result_url` gives it (the record is unchanged);
        a generation's further videos (`result.videos`, sampleCount) are signed alike."""
        url = self.result_url(job)
        if job.result is None or url == job.result.video_url:
            return job
        videos = job.result.videos
        if videos:
            videos = [msgspec.structs.replace(v, video_url=self.sign(v.video_url)) for v in videos]
        result: JobResult = msgspec.structs.replace(job.result, video_url=url, videos=videos)
        return msgspec.structs.replace(job, result=result)


def _route_path(path: str) -> str:
    """The path the video route sees and verifies: `/videos/{user}/{name}`, the last three
    segments of the public URL's path (a base URL's path prefix is not part of it)."""
    parts = path.rsplit("/", 3)
    if len(parts) == 4 and parts[1] == "videos":
        return "/" + "/".join(parts[1:])
    return path


def _secret(path: Path) -> bytes:
    """The secret in `path`, made (32 random bytes, hex, mode 0600) if the file is missing."""
    if not path.exists():  # written aside, then linked in: never a half-written secret
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(_SECRET_BYTES) + "\n")
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(temp, path)
        finally:
            os.unlink(temp)
    try:
        text = path.read_text().strip()
        secret = bytes.fromhex(text)
    except (OSError, ValueError) as exc:
        raise StorageError(
            f"cannot read the video URL secret {path} ({exc}); delete it to have a new one"
            " made (every video URL handed out so far then stops working)"
        ) from exc
    if len(secret) < 16:
        raise StorageError(f"the video URL secret {path} is too short; delete it")
    return secret
