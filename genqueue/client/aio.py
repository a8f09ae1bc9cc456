"""`AsyncClient`: the queue's asyncio methods over the HTTP API, on one aiohttp session
(opened on first use); a job's end is read from its Server-Sent Events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Collection
from urllib.parse import quote

import aiohttp
import msgspec

from genqueue.client import answers
from genqueue.client.feed import RECONNECT, StreamsFull, Subscription
from genqueue.errors import GenqueueError, InvalidRequest, JobFailed, StorageError, Unreachable
from genqueue.models import Job, JobPage, JobResult, JobStatus, QueueStatus, Submission
from genqueue.providers.registry import ProviderList
from genqueue.requests import RequestLike, parse_request
from genqueue.retry import RetryPolicy
from genqueue.webhooks import DeadLetters, Delivery, WebhookStats
from genqueue.wire import DeliveryPage, PublicDelivery, PublicJob
from genqueue.wire import JobPage as PublicJobPage

__all__ = ["AsyncClient", "AsyncWebhooks"]

_PAGE = msgspec.json.Decoder(PublicJobPage)
_JOB = msgspec.json.Decoder(PublicJob)
_STATUS = msgspec.json.Decoder(QueueStatus)
_PROVIDERS = msgspec.json.Decoder(ProviderList)
_DEAD = msgspec.json.Decoder(DeliveryPage)
_DELIVERY = msgspec.json.Decoder(PublicDelivery)
_ENCODER = msgspec.json.Encoder()
# `GET /api/events` sends the queue's figures every 2 s: this long without a byte, the
# stream is taken for dropped (a peer gone without closing it) and reopened.
_FEED_QUIET_S = 30.0


def _job_path(job_id: str) -> str:
    """The job's URL path, its id escaped ("a/../b" names one job, never another route)."""
    return f"/api/generations/{quote(job_id, safe='')}"


class AsyncClient:
    """The queue's asyncio methods (`asubmit`, `aget`, ...) against a genqueue server."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._subscriptions: set[Subscription] = set()
        self.webhooks = AsyncWebhooks(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unsubscribe every subscription, then close the session."""
        while self._subscriptions:
            await self._subscriptions.pop().aclose()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- jobs ------------------------------------------------------------------------------------

    async def asubmit(self, request: RequestLike, *, user_id: None = None) -> Submission:
        """Submit; `(job, created)`. Checked here first, as the server checks it."""
        if user_id is not None:
            raise InvalidRequest("over HTTP the API key decides the user", field="user_id")
        body = _ENCODER.encode(parse_request(request))
        status, raw = await self._call("POST", "/api/generations", body=body)
        return Submission(answers.job(answers.decode(_JOB, raw)), status == 202)

    async def aget(self, job_id: str) -> Job:
        _, raw = await self._call("GET", _job_path(job_id))
        return answers.job(answers.decode(_JOB, raw))

    async def acancel(self, job_id: str) -> Job:
        _, raw = await self._call("DELETE", _job_path(job_id))
        return answers.job(answers.decode(_JOB, raw))

    async def alist_jobs(
        self,
        user_id: str | None = None,
        statuses: Collection[JobStatus] | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobPage:
        """The key's jobs (an admin key: everyone's, or `user_id`'s), newest first."""
        if statuses is not None and not statuses:
            return JobPage([], None)  # among no statuses: none, as embedded
        params = {"limit": str(limit)}
        if statuses:
            params["status"] = ",".join(statuses)
        if cursor is not None:
            params["cursor"] = cursor
        if user_id is not None:
            params["userId"] = user_id
        _, raw = await self._call("GET", "/api/generations", params=params)
        page = answers.decode(_PAGE, raw)
        return JobPage([answers.job(p) for p in page.items], page.next_cursor)

    async def astatus(self) -> QueueStatus:
        _, raw = await self._call("GET", "/api/queue/status")
        return answers.decode(_STATUS, raw)

    async def aproviders(self) -> ProviderList:
        _, raw = await self._call("GET", "/api/providers")
        return answers.decode(_PROVIDERS, raw)

    async def ahealthy(self) -> bool:
        try:
            await self._call("GET", "/healthz")
        except (StorageError, Unreachable):
            return False
        return True

    async def await_job(self, job_id: str, timeout_s: float | None = None) -> Job:
        """The job once it has finished (its event stream's last event)."""
        try:
            return await asyncio.wait_for(self._follow(job_id), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"job {job_id} has not finished after {timeout_s} s") from None

    async def aresult(self, job_id: str, timeout_s: float | None = None) -> JobResult:
        job = await self.await_job(job_id, timeout_s)
        if job.status != "completed" or job.result is None:
            raise JobFailed(job)
        return job.result

    async def asubscribe(
        self, callback: Callable[[Job], None], *, retry: RetryPolicy = RECONNECT
    ) -> Subscription:
        """Call `callback(job)` (on this loop) on each change of a job the key may see, from
        `GET /api/events`; returns once the stream is open (raising what refused it:
        StreamsFull past the key's GENQUEUE_MAX_STREAMS_PER_KEY). A dropped stream is reopened
        after `retry`'s waits. Calling the returned subscription unsubscribes; what is
        delivered, and what JobQueue.subscribe delivers that this does not: feed.py."""
        subscription = Subscription(
            lambda: self._events("/api/events", feed=True), self.aget, callback, retry
        )
        await subscription.start()
        self._subscriptions.add(subscription)
        subscription.on_close(self._subscriptions.discard)
        return subscription

    async def _follow(self, job_id: str) -> Job:
        stream = self._events(_job_path(job_id) + "/events")
        try:
            async with contextlib.aclosing(stream) as events:
                async for _, data in events:
                    job = answers.job(answers.decode(_JOB, data))
                    if job.terminal:
                        return job
        except StreamsFull:  # the key holds all the streams it may: read the job instead
            return await self._poll(job_id)
        raise GenqueueError(f"the event stream of job {job_id} ended before the job did")

    async def _poll(self, job_id: str) -> Job:
        """The job once finished, by reading it: 0.1 s apart, then up to 2 s apart."""
        delay_s = 0.1
        while not (job := await self.aget(job_id)).terminal:
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 2.0)
        return job

    # -- HTTP ------------------------------------------------------------------------------------

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else None
        url = self.base_url + path
        try:
            async with self._open().request(
                method, url, data=body, params=params, headers=headers
            ) as resp:
                raw = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._unreachable(exc) from exc
        if resp.status >= 400:
            raise answers.error_for(resp.status, raw, path)
        return resp.status, raw

    async def _events(
        self, path: str, *, feed: bool = False
    ) -> AsyncGenerator[tuple[str, bytes], None]:
        """Each Server-Sent Event at `path`, `(event, data)` (no overall timeout); `feed`:
        the dashboard's feed, asked for as a stream, dropped after `_FEED_QUIET_S` silent."""
        url = self.base_url + path
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout.total, sock_read=_FEED_QUIET_S if feed else None
        )
        headers = {"Accept": "text/event-stream"} if feed else None
        try:
            async with self._open().get(url, timeout=timeout, headers=headers) as resp:
                if resp.status >= 400:
                    raw = await resp.read()
                    error = answers.error_for(resp.status, raw, path)
                    if answers.code_of(raw) == "too_many_streams":
                        error = StreamsFull(f"cannot open an event stream: {error}")
                        error.status = resp.status
                    raise error
                event, data = "message", list[bytes]()
                async for line in resp.content:
                    line = line.rstrip(b"\r\n")
                    if line.startswith(b"data:"):
                        data.append(line[5:].lstrip(b" "))
                    elif line.startswith(b"event:"):
                        event = line[6:].strip().decode("utf-8", "replace")
                    elif not line and data:
                        yield event, b"\n".join(data)
                        event, data = "message", []
        except (TimeoutError, ConnectionError, aiohttp.ClientError) as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: BaseException) -> Unreachable:
        reason = str(exc) or type(exc).__name__
        return Unreachable(f"cannot reach genqueue at {self.base_url}: {reason}")


class AsyncWebhooks:
    """`AsyncClient.webhooks`: the outbox (admin key)."""

    def __init__(self, client: AsyncClient):
        self._client = client

    async def astats(self) -> WebhookStats:
        return msgspec.convert((await self._client.astatus()).webhooks, WebhookStats)

    async def adead(self, limit: int = 100, after: str | None = None) -> DeadLetters:
        params = {"limit": str(limit)}
        if after is not None:
            params["cursor"] = after
        _, raw = await self._client._call("GET", "/api/webhooks/dead", params=params)
        page = answers.decode(_DEAD, raw)
        return DeadLetters([answers.delivery(d) for d in page.items], page.next_cursor)

    async def areplay(self, delivery_id: str) -> Delivery:
        _, raw = await self._client._call(
            "POST", f"/api/webhooks/{quote(delivery_id, safe='')}/replay"
        )
        return answers.delivery(answers.decode(_DELIVERY, raw))
