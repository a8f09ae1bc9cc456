"""`Client`: the queue's blocking methods, an `AsyncClient` run on a private event loop
thread (started on first use, stopped by `close`)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Collection
from typing import TypeVar

from genqueue.actors.coalesce import Coalescer
from genqueue.client.aio import AsyncClient
from genqueue.client.feed import RECONNECT, Subscription
from genqueue.models import Job, JobPage, JobResult, JobStatus, QueueStatus, Submission
from genqueue.providers.registry import ProviderList
from genqueue.requests import RequestLike
from genqueue.retry import RetryPolicy
from genqueue.webhooks import DeadLetters, Delivery, WebhookStats

__all__ = ["Client", "Webhooks"]

T = TypeVar("T")
log = logging.getLogger("genqueue.client")


class Client:
    """The queue's blocking methods (`submit`, `get`, ...) against a genqueue server; the
    requests run on a private event loop thread, started on first use."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 30.0):
        self._async = AsyncClient(base_url, api_key, timeout_s=timeout_s)
        self.base_url = self._async.base_url
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._subscribers: set[_Subscriber] = set()
        self.webhooks = Webhooks(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unsubscribe every subscription, close the session, stop the loop thread."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
            subscribers, self._subscribers = self._subscribers, set()
        if loop is not None and thread is not None:
            asyncio.run_coroutine_threadsafe(self._async.aclose(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
        for subscriber in subscribers:
            subscriber.calls.stop()

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

    def subscribe(
        self, callback: Callable[[Job], None], *, retry: RetryPolicy = RECONNECT
    ) -> Callable[[], None]:
        """Call `callback(job)` on each change of a job the key may see (`GET /api/events`),
        in order, on a thread of this subscription's own (as JobQueue's `job-events`
        thread: a callback may call this client); returns an unsubscribe function, after
        which no callback runs. Raises what refused the stream (StreamsFull past the key's
        GENQUEUE_MAX_STREAMS_PER_KEY). The stream runs on the client's loop, reopened after
        a drop; what is delivered then: feed.py."""
        calls = _Calls(callback)
        try:
            subscription = self._run(self._async.asubscribe(calls.put, retry=retry))
        except BaseException:
            calls.stop()
            raise
        subscriber = _Subscriber(self, subscription, calls)
        with self._lock:
            self._subscribers.add(subscriber)
        return subscriber

    def _unsubscribe(self, subscriber: _Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(subscriber)
            loop = self._loop
        if loop is not None:
            asyncio.run_coroutine_threadsafe(subscriber.subscription.aclose(), loop).result(10)
        subscriber.calls.stop()

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


class _Subscriber:
    """What `Client.subscribe` returns: call it to unsubscribe (again: nothing)."""

    def __init__(self, client: Client, subscription: Subscription, calls: _Calls):
        self._client, self.subscription, self.calls = client, subscription, calls

    def __call__(self) -> None:
        self._client._unsubscribe(self)


class _Calls:
    """A subscriber's callback, called in order on its own thread (fed by a Coalescer: one
    wake a batch): one that blocks, or calls the client (whose loop hands it the jobs),
    would otherwise stall the loop. A callback that raises is logged; the next job goes on."""

    def __init__(self, callback: Callable[[Job], None]):
        self._callback = callback
        self._woken = threading.Event()
        self._jobs: Coalescer[Job] = Coalescer(self._woken.set)
        self._stopped = False
        self._thread = threading.Thread(target=self._deliver, name="genqueue-client-events")
        self._thread.daemon = True
        self._thread.start()

    def put(self, job: Job) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        """No call after this returns (unless it is called by the callback itself)."""
        self._stopped = True
        self._woken.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(10)

    def _deliver(self) -> None:
        while not self._stopped:
            self._woken.wait()
            self._woken.clear()
            for job in self._jobs.take():
                if self._stopped:
                    return
                try:
                    self._callback(job)
                except Exception:
                    log.exception("job event subscriber failed")


async def _awaited(coro: Awaitable[T]) -> T:
    return await coro
