"""Serving a FakeFal on loopback (`async with FakeFalServer(...) as fal:`), over HTTPS with
an `ssl_context`: fal-client always speaks `https://{FAL_QUEUE_RUN_HOST}`."""

from __future__ import annotations

import ssl
from typing import Any

from aiohttp import web

from genqueue.providers.fake_fal.app import FakeFal

__all__ = ["FakeFalServer"]


class FakeFalServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        **options: Any,
    ):
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.fal = FakeFal(**options)
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeFal:
        runner = web.AppRunner(self.fal.app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context)
            await site.start()
        except BaseException:
            await self.__aexit__()
            raise
        port = runner.addresses[0][1]
        scheme = "https" if self.ssl_context is not None else "http"
        self.fal.base_url = f"{scheme}://{self.host}:{port}"
        return self.fal

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
