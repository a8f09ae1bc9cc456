"""What the webhook receivers run as processes share: the verifying app, and serving it
on loopback until told.

    await serve_until_signal(verifying_app(secret, keep, kept), port)

Prints `receiver listening on URL` once it answers, stops on SIGINT or SIGTERM, and never
outlives a dead parent test by more than DEADLINE_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

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


def verifying_app(
    secret: str,
    keep: Callable[[dict[str, Any]], None],
    kept: Callable[[], list[dict[str, Any]]],
) -> web.Application:
    """`POST /hook` verifies each delivery with `standardwebhooks` (401 if it fails) and
    hands `keep` its record; `GET /received` answers {"deliveries": kept(), "rejected": n}."""
    verifier = Webhook(secret)
    rejected = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal rejected
        body = await request.read()
        try:
            payload = verifier.verify(body, dict(request.headers))
        except WebhookVerificationError:
            rejected += 1
            return web.Response(status=401)
        keep(
            {
                "id": request.headers["webhook-id"],
                "jobId": payload.get("jobId"),
                "event": payload.get("event"),
                "status": payload.get("status"),
                "payload": payload,
                "sha256": hashlib.sha256(body).hexdigest(),
                "at": time.time(),
            }
        )
        return web.Response(status=204)

    async def received(_request: web.Request) -> web.Response:
        return web.json_response({"deliveries": kept(), "rejected": rejected})

    app = web.Application()
    app.add_routes([web.post("/hook", hook), web.get("/received", received)])
    return app
