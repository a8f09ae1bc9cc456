"""`Client`: the queue's blocking methods, an `AsyncClient` run on a private event loop
thread (started on first use, stopped by `close`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Collection
from typing import TypeVar

from genqueue.client.aio import AsyncClient
from genqueue.models import Job, JobPage, JobResult, JobStatus, QueueStatus, Submission
from genqueue.providers.registry import ProviderList
from genqueue.requests import RequestLike
from genqueue.webhooks import DeadLetters, Delivery, WebhookStats

__all__ = ["Client", "Webhooks"]

T = TypeVar("T")


class Client:
    """The queue's blocking methods (`submit`, `get`, ...) against a genqueue server; the
    requests run on a private event loop thread, started on first use."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 30.0):
        self._async = AsyncClient(base_url, api_key, timeout_s=timeout_s)
        self.base_url = self._async.base_url
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.webhooks = Webhooks(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._async.aclose(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    def submit(self, request: RequestLike, *, user_id: None = None) -> Submission:
        return self._run(self._async.asubmit(request, user_id=user_id))

    def get(self, job_id: str) -> Job:
        return self._run(self._async.aget(job_id))

    def cancel(self, job_id: str) -> Job:
        return self._run(self._async.acancel(job_id))

    def list_jobs(
        self,
        user_id: str | None = None,
        statuses: Collection[JobStatus] | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobPage:
        return self._run(self._async.alist_jobs(user_id, statuses, limit, cursor))

    def status(self) -> QueueStatus:
        return self._run(self._async.astatus())

    def providers(self) -> ProviderList:
        return self._run(self._async.aproviders())

    def healthy(self) -> bool:
        return self._run(self._async.ahealthy())

    def wait(self, job_id: str, timeout_s: float | None = None) -> Job:
        return self._run(self._async.await_job(job_id, timeout_s))

    def result(self, job_id: str, timeout_s: float | None = None) -> JobResult:
        return self._run(self._async.aresult(job_id, timeout_s))

    def _run(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(_awaited(coro), self._started()).result()

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="genqueue-client")
                thread.daemon = True
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop


class Webhooks:
    """`Client.webhooks`: the outbox (admin key)."""

    def __init__(self, client: Client):
        self._client = client

    def stats(self) -> WebhookStats:
        return self._client._run(self._client._async.webhooks.astats())

    def dead(self, limit: int = 100, after: str | None = None) -> DeadLetters:
        return self._client._run(self._client._async.webhooks.adead(limit, after))

    def replay(self, delivery_id: str) -> Delivery:
        return self._client._run(self._client._async.webhooks.areplay(delivery_id))


async def _awaited(coro: Awaitable[T]) -> T:
    return await coro
