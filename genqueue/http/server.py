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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_runner import GracefulExit

from genqueue.http.errors import ApiError, error_response

__all__ = ["JsonErrorRunner", "run_app"]

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


async def _serve(app: web.Application, sock: socket.socket, shutdown_timeout_s: float) -> None:
    runner = JsonErrorRunner(app, handle_signals=True, shutdown_timeout=shutdown_timeout_s)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        await asyncio.Event().wait()  # until SIGINT / SIGTERM raise GracefulExit
    finally:
        await runner.cleanup()


def run_app(app: web.Application, sock: socket.socket, *, shutdown_timeout_s: float = 10) -> None:
    """Serve `app` on `sock` until SIGINT or SIGTERM (aiohttp's run_app, one socket)."""
    loop = asyncio.new_event_loop()
    main = loop.create_task(_serve(app, sock, shutdown_timeout_s))
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
