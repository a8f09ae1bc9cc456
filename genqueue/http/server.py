"""Running the app on a socket, with aiohttp's own protocol errors in the API's JSON shape.

A request aiohttp cannot parse (an over-long request line or header, a malformed one)
never reaches the middlewares: aiohttp answers it itself, in text/plain, echoing part of
the offending line, and logs a traceback at ERROR for each one. Here such a request gets
`{"error": {"code", "message"}}` like every other error, echoes nothing, and costs one
WARNING line without the client's bytes (so nothing a client sends, a key included, is
logged from it).

`run_app(app, sock)` is aiohttp's `web.run_app` for one listening socket, with that
request handler: SIGINT and SIGTERM end it gracefully, and an exception raised while the
app starts (e.g. DataDirInUse from the queue's cleanup context) propagates to the caller.
It also holds the connection limits that live where connections are accepted:

- `max_connections` (GENQUEUE_MAX_CONNECTIONS): a connection beyond it is answered at
  once with a 503 `too_many_connections` and closed, before a byte of it is read.
- `header_timeout_s` (GENQUEUE_HEADER_TIMEOUT_S): a connection must send a complete
  request head within this time of its opening or of its previous response, or it is
  closed. aiohttp's keep-alive timer covers exactly that span, half-sent heads included
  (3,000 half-sent heads were once held for its default 75 s each); it is also how long
  an idle keep-alive connection stays.

The per-key stream cap and the body deadline are in the app (`limits.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_runner import GracefulExit

from genqueue.http.errors import ApiError, error_response

__all__ = ["JsonErrorRunner", "capped", "run_app"]

log = logging.getLogger("genqueue.http")


class _JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler, answering its own errors in the API's JSON shape."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        kind = type(exc).__name__ if exc is not None else None
        if status >= 500:
            log.error("unhandled error answering a request", exc_info=exc)
            text = "internal error"
        else:
            log.warning("unparsable HTTP request refused", extra={"status": status, "error": kind})
            text = (
                f"the request line or a header is malformed or too long ({kind}); "
                "nothing of the request was read"
            )
        if request.writer.output_size > 0:  # as aiohttp: a response already started
            raise ConnectionError("a response was already sent; cannot send an error")
        response = error_response(ApiError(status, text))
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    """An AppRunner whose connections answer aiohttp's own protocol errors in JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _JsonErrorServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )


_REFUSAL_BODY = orjson.dumps(
    {
        "error": {
            "code": "too_many_connections",
            "message": "the server holds as many connections as it allows "
            "(GENQUEUE_MAX_CONNECTIONS); try again shortly",
        }
    }
)
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


class _Refused(asyncio.Protocol):
    """A connection past the cap: told so, then closed (nothing of it is read)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_REFUSAL)
        transport.close()


def capped(server: web.Server, max_connections: int) -> Callable[[], asyncio.BaseProtocol]:
    """A protocol factory for `loop.create_server`: the server's handler while fewer than
    `max_connections` are open (0: no cap), else a refusal."""

    def factory() -> asyncio.BaseProtocol:
        if max_connections and len(server.connections) >= max_connections:
            return _Refused()
        return server()

    return factory


async def _serve(
    app: web.Application,
    sock: socket.socket,
    shutdown_timeout_s: float,
    max_connections: int,
    header_timeout_s: float,
) -> None:
    runner = JsonErrorRunner(
        app,
        handle_signals=True,
        shutdown_timeout=shutdown_timeout_s,
        keepalive_timeout=header_timeout_s,
    )
    await runner.setup()
    try:
        assert runner.server is not None
        loop = asyncio.get_running_loop()
        factory = capped(runner.server, max_connections)
        listener = await loop.create_server(factory, sock=sock, backlog=1024)
        try:
            await asyncio.Event().wait()  # until SIGINT / SIGTERM raise GracefulExit
        finally:
            listener.close()  # accept nothing more, then close the app's connections
    finally:
        await runner.cleanup()


def run_app(
    app: web.Application,
    sock: socket.socket,
    *,
    shutdown_timeout_s: float = 10,
    max_connections: int = 0,
    header_timeout_s: float = 75.0,
) -> None:
    """Serve `app` on `sock` until SIGINT or SIGTERM (aiohttp's run_app, one socket), with
    at most `max_connections` (0: no cap) and `header_timeout_s` for a request head."""
    loop = asyncio.new_event_loop()
    main = loop.create_task(
        _serve(app, sock, shutdown_timeout_s, max_connections, header_timeout_s)
    )
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():  # a finished one would raise its exception again
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()
