"""Child process for the fault suite: a webhook receiver that verifies, and remembers on disk.

    python tests/fault_receiver.py PORT SECRET LOG

`POST /hook` verifies the Standard Webhooks signature with `standardwebhooks` (401 when it
does not verify) and appends `{id, jobId, event, status, payload, sha256, at}` for each
delivery, duplicates included, as one JSON line to LOG, so the record outlives a stop and a
restart on the same port (the fault suite takes the receiver down for a while).
`GET /received` returns `{"deliveries": [...], "rejected": N}` (rejections of this run).
It runs until SIGTERM or SIGINT, or a deadline (so it never outlives a dead parent).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path

from aiohttp import web
from receiver_app import serve_until_signal
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


async def serve(port: int, secret: str, log: Path) -> None:
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
        record = {
            "id": request.headers["webhook-id"],
            "jobId": payload.get("jobId"),
            "event": payload.get("event"),
            "status": payload.get("status"),
            "payload": payload,
            "sha256": hashlib.sha256(body).hexdigest(),
            "at": time.time(),
        }
        with log.open("a") as f:  # one write per line: whole lines even across restarts
            f.write(json.dumps(record) + "\n")
        return web.Response(status=204)

    async def received(_request: web.Request) -> web.Response:
        lines = log.read_text().splitlines() if log.exists() else []
        deliveries = [json.loads(line) for line in lines if line.strip()]
        return web.json_response({"deliveries": deliveries, "rejected": rejected})

    app = web.Application()
    app.add_routes([web.post("/hook", hook), web.get("/received", received)])
    await serve_until_signal(app, port)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])))
