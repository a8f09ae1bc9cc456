"""Where the fake's videos are fetched: the Gemini file download, a bare storage URL, and
Cloud Storage's JSON API for the `gs://` objects a Vertex start with `storageUri` made.

- `GET /v1beta/files/{id}:download?alt=media` (Gemini; google-genai's `files.download`
  builds `files/{name}:download?alt=media` from the video URI, taking `[a-z0-9]+` after
  `files/` of an `https://` URI, so file ids here are lower-case hex);
- `GET /media/{file}`: an unauthenticated storage URL (what the real download redirects to);
- `GET /storage/v1/b/{bucket}/o/{object}?alt=media`: the object's bytes (the object name is
  one URL-escaped path segment, `/` as `%2F`), with the Vertex credentials; without
  `alt=media`, the object's metadata.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import TYPE_CHECKING, Any

from aiohttp import web

from genqueue.providers.fake_veo.google_errors import google_error
from genqueue.providers.fake_veo.video import iter_mp4

if TYPE_CHECKING:
    from genqueue.providers.fake_veo.app import FakeVeo

__all__ = ["MediaRoutes"]


class MediaRoutes:
    """The download routes of one FakeVeo, reading its files, faults and counters."""

    def __init__(self, fake: FakeVeo):
        self.fake = fake

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1beta/files/{action}", self._download),
            web.get("/media/{file}", self._media),
            web.get("/storage/v1/b/{bucket}/o/{object:.+}", self._gcs_object),
        ]

    async def _download(self, request: web.Request) -> web.StreamResponse:
        fake = self.fake
        file_id, _, method = request.match_info["action"].partition(":")
        denied = fake.credentials.refuse(request, "any")
        if denied is not None:
            return denied
        if fake.faults.downloads:
            return fake.failure_response(fake.faults.downloads.popleft(), "gemini", request)
        op = fake.files.get(file_id)
        if method != "download" or op is None:
            return google_error(404, f"File {file_id} not found.")
        if fake.redirect_downloads_to:
            raise web.HTTPFound(fake.redirect_downloads_to)
        op.downloads += 1
        return await self._stream_video(request)

    async def _media(self, request: web.Request) -> web.StreamResponse:
        return await self._stream_video(request)

    async def _gcs_object(self, request: web.Request) -> web.StreamResponse:
        fake = self.fake
        denied = fake.credentials.refuse(request, "vertex")
        if denied is not None:
            return denied
        bucket = request.match_info["bucket"]
        name = urllib.parse.unquote(request.match_info["object"])
        op = fake.gcs.get((bucket, name))
        if op is None:
            return google_error(404, f"No such object: {bucket}/{name}")
        if request.query.get("alt") != "media":
            return web.json_response(_object_resource(bucket, name, fake.video_size))
        if fake.faults.downloads:
            return fake.failure_response(fake.faults.downloads.popleft(), "vertex", request)
        op.downloads += 1
        return await self._stream_video(request)

    async def _stream_video(self, request: web.Request) -> web.StreamResponse:
        fake = self.fake
        fake.downloads += 1
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = fake.video_size
        await response.prepare(request)
        cut = fake.cut_download or fake.cut_downloads_left > 0
        fake.cut_downloads_left = max(0, fake.cut_downloads_left - 1)
        limit = fake.video_size // 2 if cut else fake.video_size
        sent = 0
        for chunk in iter_mp4(fake.video_size):
            chunk = chunk[: limit - sent]
            await response.write(chunk)
            sent += len(chunk)
            if sent >= limit:
                break
        if cut and request.transport is not None:
            request.transport.abort()  # half the body, then the connection drops;
            raise asyncio.CancelledError  # aiohttp treats it as a client that went away
        await response.write_eof()
        return response


def _object_resource(bucket: str, name: str, size: int) -> dict[str, Any]:
    """An object's metadata, as Cloud Storage's JSON API answers `GET .../o/{object}`."""
    return {
        "kind": "storage#object",
        "id": f"{bucket}/{name}",
        "name": name,
        "bucket": bucket,
        "contentType": "video/mp4",
        "size": str(size),
    }
