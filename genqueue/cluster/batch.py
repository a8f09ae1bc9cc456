"""Calls made in one turn of the loop go to SQS as one batch request (up to 10 entries).

A coroutine awaits its own entry's result; a batch that fails as a whole fails each
entry, and an entry SQS lists under `Failed` fails alone. Under load this turns one
request per message into one per ten (DeleteMessageBatch, SendMessageBatch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Batcher", "EntryFailed"]

MAX_ENTRIES = 10  # SQS's limit per batch request

Send = Callable[[list[dict[str, Any]]], Awaitable[dict[str, Any]]]


class EntryFailed(Exception):
    """SQS refused one entry of a batch."""


class Batcher:
    """Coalesces entries for one batch operation of one queue."""

    def __init__(self, send: Send):
        self._send = send
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, entry: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append((entry, fut))
        if len(self._pending) >= MAX_ENTRIES:
            self._flush()
        elif len(self._pending) == 1:
            loop.call_soon(self._flush)
        await fut

    def _flush(self) -> None:
        batch, self._pending = self._pending[:MAX_ENTRIES], self._pending[MAX_ENTRIES:]
        if self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        entries = [{**entry, "Id": str(i)} for i, (entry, _) in enumerate(batch)]
        try:
            resp = await self._send(entries)
        except BaseException as exc:
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
