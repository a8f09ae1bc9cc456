"""The queue's life inside the app (a `cleanup_ctx`): the processor (given, the cluster's
coordinator, or the generation service), the queue, the job event hub and the store's
healer start before the server serves and stop after it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from genqueue import Clock, Config, JobQueue, Processor, veo_processor
from genqueue.http.context import EVENTS, QUEUE
from genqueue.http.sse import JobEvents

__all__ = ["lifecycle"]

log = logging.getLogger("genqueue.http")


def lifecycle(
    config: Config, processor: Processor | None, clock: Clock | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def run(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            proc = processor
            coordinator = None
            if proc is None and config.dispatch == "sqs":
                from genqueue.cluster.coordinator import Coordinator

                coordinator = Coordinator(config, clock=clock)
                await coordinator.start()
                stack.push_async_callback(coordinator.close)
                proc = coordinator
            if proc is None:
                service = veo_processor(config, clock=clock)
                await service.start()
                stack.push_async_callback(service.close)
                proc = service
            queue = JobQueue(config, proc, clock=clock, loop=loop)
            # open/close wait on actor threads, which may need this loop: not on it.
            await asyncio.to_thread(queue.open)
            stack.push_async_callback(asyncio.to_thread, queue.close)
            if coordinator is not None:  # events wait in SQS until the queue is open
                from genqueue.cluster.consumer import EventsConsumer

                consumer = EventsConsumer(coordinator, queue)
                stack.callback(consumer.close)
                consumer.start()
                stack.push_async_callback(coordinator.stop_tasks)
            healer = asyncio.create_task(_heal_store(queue, config))
            stack.push_async_callback(_cancel, healer)
            events = JobEvents(loop)
            stack.callback(queue.subscribe(events.publish))
            app[QUEUE] = queue
            app[EVENTS] = events
            yield

    return run


async def _heal_store(queue: JobQueue, config: Config) -> None:
    """While the state store is failed (a full or read-only disk), look every
    `store_retry_s` whether the data directory takes writes again; then reopen the queue
    from disk, as a restart would. Requests meanwhile get 503."""
    while True:
        await asyncio.sleep(config.store_retry_s)
        if not queue.unavailable:
            continue
        if not await asyncio.to_thread(_takes_writes, config.data_path):
            continue
        try:
            await asyncio.to_thread(queue.reopen)
        except Exception as exc:
            log.warning("the state store is still unavailable", extra={"error": repr(exc)})
        else:
            log.warning("the state store takes writes again: the queue was reopened from disk")


def _takes_writes(folder: Path) -> bool:
    """Whether `folder` takes a small durable write (a probe file, removed after)."""
    probe = folder / ".genqueue-write-probe"
    try:
        with probe.open("wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError:
        with contextlib.suppress(OSError):
            probe.unlink()
        return False
    return True


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
