"""Child process for the crash-loop test: a webhook receiver that verifies and remembers.

    python tests/crash_loop_receiver.py PORT SECRET

`POST /hook` verifies the Standard Webhooks signature with `standardwebhooks` (401 when
it does not verify) and records `{id, jobId, event, status, sha256}` for each delivery,
duplicates included; `GET /received` returns `{"deliveries": [...], "rejected": N}`.
It runs until SIGTERM or SIGINT, or a deadline (so it never outlives a dead parent).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from typing import Any

from aiohttp import web
from receiver_app import serve_until_signal
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


async def serve(port: int, secret: str) -> None:
    verifier = Webhook(secret)
    deliveries: list[dict[str, Any]] = []
    rejected = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal rejected
        body = await request.read()
        try:
            payload = verifier.verify(body, dict(request.headers))
        except WebhookVerificationError:
            rejected += 1
            return web.Response(status=401)
        deliveries.append(
            {
                "id": request.headers["webhook-id"],
                "jobId": payload.get("jobId"),
                "event": payload.get("event"),
                "status": payload.get("status"),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        )
        return web.Response(status=204)

    async def received(_request: web.Request) -> web.Response:
        return web.Response(
            text=json.dumps({"deliveries": deliveries, "rejected": rejected}),
            content_type="application/json",
        )

    app = web.Application()
    app.add_routes([web.post("/hook", hook), web.get("/received", received)])
    await serve_until_signal(app, port)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2]))
