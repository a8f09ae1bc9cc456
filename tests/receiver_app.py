"""What the webhook receivers run as processes share: serve an app on loopback until told.

    await serve_until_signal(app, port)

Prints `receiver listening on URL` once it answers, stops on SIGINT or SIGTERM, and never
outlives a dead parent test by more than DEADLINE_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from aiohttp import web

DEADLINE_S = 600.0


async def serve_until_signal(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"receiver listening on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), DEADLINE_S)
    await runner.cleanup()
