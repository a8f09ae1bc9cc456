"""A genqueue server for client tests: `create_app` run as `main.py serve` runs it, on its
own loop thread, on loopback."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from genqueue import Config
from genqueue.http import JsonErrorRunner, create_app

KEY = "k-default"


@contextmanager
def http_server(data_dir: Path, processor: Any, *, port: int = 0, **settings: Any) -> Iterator[str]:
    """The server's base URL while it runs (`port` 0: a free one; the same `port` and
    `data_dir` again: the same server restarted)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-server", daemon=True)
    thread.start()
    settings.setdefault("api_keys", f"{KEY}=default:admin")
    cfg = Config(data_dir=str(data_dir), synchronous="NORMAL", **settings)

    async def start() -> web.AppRunner:
        runner = JsonErrorRunner(create_app(cfg, processor=processor))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
