"""Serving a FakeVeo on loopback: in a test (`async with FakeVeoServer(...)`) or as its own
process (`python main.py fake-veo --port N`). With an `ssl_context`, it speaks HTTPS, as
Google does (google-genai 2.x's `files.download` only parses an `https://` video URI)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web

from genqueue.providers.fake_veo.app import FakeVeo
from genqueue.providers.fake_veo.oauth import TokenIssuer

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


def serve_fake_veo(
    host: str, port: int, *, service_account_key: Path | None = None, **options: Any
) -> None:
    """Serve a FakeVeo until SIGINT or SIGTERM (`python main.py fake-veo --port N`).

    With `service_account_key`, it also serves `POST /token` and writes there a new key file
    whose `token_uri` is that endpoint, so another process can use it as
    GOOGLE_APPLICATION_CREDENTIALS; Vertex calls then need a token it issued.
    """
    issuer_options = options.pop("issuer_options", {})
    if service_account_key is not None:
        options.setdefault("token_issuer", TokenIssuer(**issuer_options))
    asyncio.run(_serve_forever(host, port, options, service_account_key))


async def _serve_forever(
    host: str, port: int, options: dict[str, Any], key_path: Path | None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with FakeVeoServer(host, port, **options) as fake:
        if key_path is not None and fake.token_issuer is not None:
            token_uri = f"{fake.base_url}/token"
            fake.token_issuer.new_key(key_path.parent, token_uri, path=key_path)
        print(f"fake Veo listening on {fake.base_url}", flush=True)
        await stop.wait()
