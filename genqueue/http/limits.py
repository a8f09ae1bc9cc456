"""Limits on what one client may hold open: event streams per key, and slow bodies.

- `StreamLimit`: at most `max_streams_per_key` open Server-Sent Events streams per API
  key (both `GET /api/generations/{id}/events` and the dashboard's `GET /api/events`);
  one more is a 429 `too_many_streams`. One key once held 4,000 streams: every change
  fanned out to each, and status calls took 200-330 ms.
- `body_deadline`: a request's body must arrive within `body_timeout_s` of its head, or
  the answer is a 408 `request_timeout` and the connection is closed (a slow body once
  held a connection for more than 150 s).

The other two connection limits (a request head's deadline, the number of connections)
live where connections are accepted: `genqueue/http/serving.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from genqueue.http.auth import Caller
from genqueue.http.errors import ApiError, error_response

__all__ = ["StreamLimit", "body_deadline"]


class StreamLimit:
    """The open event streams of each API key (on the loop's thread only).

    A stream whose client left is not counted, though its handler only notices at its next
    write (a heartbeat at most 15 s later): a reconnecting dashboard is never refused for
    the stream it just dropped."""

    def __init__(self, per_key: int):
        self.per_key = per_key  # 0: no cap
        self._open: dict[int, dict[int, web.Request]] = {}  # key -> id(request) -> request

    def open_streams(self, caller: Caller) -> int:
        return sum(1 for r in self._open.get(caller.key_index, {}).values() if _connected(r))

    @contextlib.contextmanager
    def hold(self, caller: Caller, request: web.Request) -> Iterator[None]:
        """One stream of `caller`'s key for the `with` block; a 429 if it has its cap."""
        n = self.open_streams(caller)
        if self.per_key and n >= self.per_key:
            raise ApiError(
                429,
                f"this API key has {n} event streams open, the limit "
                "(GENQUEUE_MAX_STREAMS_PER_KEY); close one first",
                code="too_many_streams",
                headers={"Retry-After": "5"},
            )
        streams = self._open.setdefault(caller.key_index, {})
        streams[id(request)] = request
        try:
            yield
        finally:
            streams.pop(id(request), None)
            if not streams:
                self._open.pop(caller.key_index, None)


def _connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


def body_deadline(timeout_s: float) -> Middleware:
    """Read a request's body before its handler, within `timeout_s` (aiohttp keeps it
    for the handler's own `read()`): a 408 and a closed connection past it."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            try:
                async with asyncio.timeout(timeout_s):
                    await request.read()
            except TimeoutError:
                response = error_response(
                    ApiError(
                        408,
                        f"the request body did not arrive within {timeout_s:g} s "
                        "(GENQUEUE_BODY_TIMEOUT_S)",
                        code="request_timeout",
                    )
                )
                response.force_close()
                # Sent now, then the connection closed: not left open for aiohttp's lingering
                # read of the rest of the body (10 s), which is what a slow body wants.
                await response.prepare(request)
                await response.write_eof()
                request.protocol.force_close()
                return response
        return await handler(request)

    return middleware
