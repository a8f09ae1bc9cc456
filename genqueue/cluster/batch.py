"""Calls made in one turn of the loop go to SQS as one batch request (up to 10 entries).

A coroutine awaits its own entry's result; a batch that fails as a whole fails each
entry, and an entry SQS lists under `Failed` fails alone. Under load this turns one
request per message into one per ten (DeleteMessageBatch, SendMessageBatch).

SQS also caps a batch's total payload (the sum of the message bodies): 256 KiB before
2025 and on most SQS-compatible servers, 1 MiB on AWS today. A batch is flushed before it
would pass `MAX_BATCH_BYTES` (the smaller, so every endpoint takes it); an entry larger
than that goes alone. A batch refused as too long all the same (`BatchRequestTooLong`) is
split in two and each half sent again, down to single entries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["MAX_BATCH_BYTES", "Batcher", "EntryFailed", "body_bytes"]

MAX_ENTRIES = 10  # SQS's limit per batch request
MAX_BATCH_BYTES = 256 * 1024  # SQS's total payload per batch request (the smaller limit)

Send = Callable[[list[dict[str, Any]]], Awaitable[dict[str, Any]]]
Pending = list[tuple[dict[str, Any], asyncio.Future[None]]]


class EntryFailed(Exception):
    """SQS refused one entry of a batch."""


def body_bytes(entry: dict[str, Any]) -> int:
    """What an entry counts towards a batch's total payload."""
    body = entry.get("MessageBody")
    return len(body.encode()) if isinstance(body, str) else 0


class Batcher:
    """Coalesces entries for one batch operation of one queue."""

    def __init__(self, send: Send, *, max_bytes: int = MAX_BATCH_BYTES):
        self._send = send
        self._max_bytes = max_bytes
        self._pending: Pending = []
        self._pending_bytes = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, entry: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        size = body_bytes(entry)
        if self._pending and self._pending_bytes + size > self._max_bytes:
            self._flush()  # what waits goes now; this entry starts the next batch
        self._pending.append((entry, fut))
        self._pending_bytes += size
        if len(self._pending) >= MAX_ENTRIES:
            self._flush()
        elif len(self._pending) == 1:
            loop.call_soon(self._flush)
        await fut

    def _flush(self) -> None:
        batch: Pending = []
        total = 0
        while self._pending and len(batch) < MAX_ENTRIES:
            size = body_bytes(self._pending[0][0])
            if batch and total + size > self._max_bytes:
                break
            batch.append(self._pending.pop(0))
            total += size
        self._pending_bytes -= total
        if self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: Pending) -> None:
        entries = [{**entry, "Id": str(i)} for i, (entry, _) in enumerate(batch)]
        try:
            resp = await self._send(entries)
        except BaseException as exc:
            if isinstance(exc, Exception) and len(batch) > 1 and _too_long(exc):
                half = len(batch) // 2
                await asyncio.gather(self._run(batch[:half]), self._run(batch[half:]))
                return
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else EntryFailed(repr(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        failed = {f["Id"]: f for f in resp.get("Failed", [])}
        for i, (_, fut) in enumerate(batch):
            if fut.done():
                continue
            if str(i) in failed:
                f = failed[str(i)]
                fut.set_exception(EntryFailed(f"{f.get('Code')}: {f.get('Message', '')}"))
            else:
                fut.set_result(None)


def _too_long(exc: Exception) -> bool:
    return "BatchRequestTooLong" in f"{type(exc).__name__} {exc}"
