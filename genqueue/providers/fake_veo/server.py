"""Serving a FakeVeo on loopback: in a test (`async with FakeVeoServer(...)`) or as its own
process (`python main.py fake-veo --port N`). With an `ssl_context`, it speaks HTTPS, as
Google does (google-genai 2.x's `files.download` only parses an `https://` video URI)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from typing import Any

from aiohttp import web

from genqueue.providers.fake_veo.app import FakeVeo

__all__ = ["FakeVeoServer", "serve_fake_veo"]


class FakeVeoServer:
    """`async with FakeVeoServer(port=0, **options) as fake:` a FakeVeo served on loopback."""

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
        self.veo = FakeVeo(**options)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return self.veo.base_url

    async def __aenter__(self) -> FakeVeo:
        runner = web.AppRunner(
            self.veo.app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context)
            await site.start()
        except BaseException:
            await self.__aexit__()
            raise
        port = runner.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.ssl_context is not None else "http"
        self.veo.base_url = f"{scheme}://{host}:{port}"
        return self.veo

    async def __aexit__(self, *exc_info: object) -> None:
        self.veo.release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def serve_fake_veo(host: str, port: int, **options: Any) -> None:
    """Serve a FakeVeo until SIGINT or SIGTERM (`python main.py fake-veo --port N`)."""
    asyncio.run(_serve_forever(host, port, options))


async def _serve_forever(host: str, port: int, options: dict[str, Any]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with FakeVeoServer(host, port, **options) as fake:
        print(f"fake Veo listening on {fake.base_url}", flush=True)
        await stop.wait()
