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
import json
import sys
from pathlib import Path
from typing import Any

from receiver_app import serve_until_signal, verifying_app


async def serve(port: int, secret: str, log: Path) -> None:
    def keep(record: dict[str, Any]) -> None:
        with log.open("a") as f:  # one write per line: whole lines even across restarts
            f.write(json.dumps(record) + "\n")

    def kept() -> list[dict[str, Any]]:
        lines = log.read_text().splitlines() if log.exists() else []
        return [json.loads(line) for line in lines if line.strip()]

    await serve_until_signal(verifying_app(secret, keep, kept), port)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])))
