"""Child process for the crash-loop test: a webhook receiver that verifies and remembers.

    python tests/crash_loop_receiver.py PORT SECRET

`POST /hook` verifies the Standard Webhooks signature with `standardwebhooks` (401 when
it does not verify) and records `{id, jobId, event, status, payload, sha256, at}` for each delivery,
duplicates included; `GET /received` returns `{"deliveries": [...], "rejected": N}`.
It runs until SIGTERM or SIGINT, or a deadline (so it never outlives a dead parent).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from receiver_app import serve_until_signal, verifying_app


async def serve(port: int, secret: str) -> None:
    deliveries: list[dict[str, Any]] = []
    await serve_until_signal(verifying_app(secret, deliveries.append, lambda: deliveries), port)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2]))
