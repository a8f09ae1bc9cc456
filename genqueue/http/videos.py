"""`GET /videos/{user}/{name}`: a stored local video, at a signed, unexpired URL only."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from aiohttp import web

from genqueue import NAME_PATTERN
from genqueue.http.context import QUEUE, VIDEO_ROOT
from genqueue.http.errors import ApiError

__all__ = ["routes"]

routes = web.RouteTableDef()

_SEGMENT = re.compile(NAME_PATTERN)


@routes.get("/videos/{user}/{name}")
async def video(request: web.Request) -> web.StreamResponse:
    """A stored `.mp4` under the video folder, at a signed, unexpired URL only (the job's
    `videoUrl`, signed afresh on each read); no dot-files, no way out of the folder."""
    user, name = request.match_info["user"], request.match_info["name"]
    if not (_SEGMENT.fullmatch(user) and _SEGMENT.fullmatch(name) and name.endswith(".mp4")):
        raise ApiError(404, "no such video")
    query = request.query
    signed = request.app[QUEUE].video_url_valid(
        f"/videos/{user}/{name}", query.get("expires"), query.get("signature")
    )
    if not signed:  # checked first: an unsigned request learns nothing, not even existence
        raise ApiError(
            403,
            "this video URL is unsigned, expired or altered: read the job again for a fresh one",
        )
    root = request.app[VIDEO_ROOT]
    path = await asyncio.to_thread(_inside, root, root / user / name)
    if path is None:
        raise ApiError(404, "no such video")
    headers = {
        "Content-Type": "video/mp4",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store",  # the URL expires; so does any copy
        "Referrer-Policy": "no-referrer",
    }
    return web.FileResponse(path, headers=headers)


def _inside(root: Path, path: Path) -> Path | None:
    """`path` resolved, if it is a regular file inside `root` (symlinks included)."""
    try:
        resolved = path.resolve(strict=True)
        inside = resolved.is_relative_to(root.resolve(strict=True)) and resolved.is_file()
    except OSError:
        return None
    return resolved if inside else None
