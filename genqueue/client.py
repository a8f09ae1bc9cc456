"""`Client` and `AsyncClient`: JobQueue's methods over the HTTP API (aiohttp).

A service moves from an embedded queue to a remote one by changing one line:

    queue = JobQueue(config, process).open()              # embedded
    queue = Client("http://127.0.0.1:8787", api_key)      # remote, same calls

They take and return the same models (`Job`, `JobPage`, `Submission`, `JobResult`,
`QueueStatus`, `ProviderList`, `WebhookStats`, `DeadLetters`, `Delivery`) and raise the
same errors (`InvalidRequest`, `JobNotFound`, `IllegalTransition`, `JobFailed`, `StorageError`,
`DeliveryNotFound`, `DeliveryNotDead`), plus `Unauthorized` for a refused key and
`Unreachable` when no server answers. The API key decides the user, so `submit`
takes no `user_id`, and `list_jobs` shows the key's jobs (an admin key's: everyone's).
What the API does not show of a job (its checkpoint, generation id, sequence number)
keeps its default in the `Job` a client returns.

`AsyncClient` is for asyncio code (the `a`-methods, as on JobQueue); `Client` is
the blocking one: it runs an `AsyncClient` on a private event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Awaitable, Collection
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import msgspec
import orjson

from genqueue.errors import (
    DeliveryNotDead,
    DeliveryNotFound,
    GenqueueError,
    IllegalTransition,
    InvalidRequest,
    JobFailed,
    JobNotFound,
    StorageError,
    Unauthorized,
    Unreachable,
)
from genqueue.models import (
    GenerationParams,
    Job,
    JobPage,
    JobResult,
    JobStatus,
    QueueStatus,
    Submission,
    VideoOutput,
)
from genqueue.providers.registry import ProviderList
from genqueue.requests import RequestLike, parse_request
from genqueue.webhooks import DeadLetters, Delivery, WebhookStats, encode_event
from genqueue.wire import DeliveryPage, PublicDelivery, PublicJob, PublicResult
from genqueue.wire import JobPage as PublicJobPage

__all__ = ["AsyncClient", "AsyncWebhooks", "Client", "Webhooks"]

T = TypeVar("T")
_PAGE = msgspec.json.Decoder(PublicJobPage)
_JOB = msgspec.json.Decoder(PublicJob)
_STATUS = msgspec.json.Decoder(QueueStatus)
_PROVIDERS = msgspec.json.Decoder(ProviderList)
_DEAD = msgspec.json.Decoder(DeliveryPage)
_DELIVERY = msgspec.json.Decoder(PublicDelivery)
_ENCODER = msgspec.json.Encoder()


class AsyncClient:
    """The queue's asyncio methods (`asubmit`, `aget`, ...) against a genqueue server."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.webhooks = AsyncWebhooks(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
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
        return Submission(_job(_decode(_JOB, raw)), status == 202)

    async def aget(self, job_id: str) -> Job:
        _, raw = await self._call("GET", f"/api/generations/{job_id}")
        return _job(_decode(_JOB, raw))

    async def acancel(self, job_id: str) -> Job:
        _, raw = await self._call("DELETE", f"/api/generations/{job_id}")
        return _job(_decode(_JOB, raw))

    async def alist_jobs(
        self,
        user_id: str | None = None,
        statuses: Collection[JobStatus] | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobPage:
        """The key's jobs (an admin key: everyone's), newest first. `user_id` narrows an
        admin's list to one user (filtered here: the API lists by key)."""
        params = {"limit": str(limit)}
        if statuses:
            params["status"] = ",".join(statuses)
        if cursor is not None:
            params["cursor"] = cursor
        _, raw = await self._call("GET", "/api/generations", params=params)
        page = _decode(_PAGE, raw)
        jobs = [_job(p) for p in page.items]
        if user_id is not None:
            jobs = [job for job in jobs if job.user_id == user_id]
        return JobPage(jobs, page.next_cursor)

    async def astatus(self) -> QueueStatus:
        _, raw = await self._call("GET", "/api/queue/status")
        return _decode(_STATUS, raw)

    async def aproviders(self) -> ProviderList:
        _, raw = await self._call("GET", "/api/providers")
        return _decode(_PROVIDERS, raw)

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

    async def _follow(self, job_id: str) -> Job:
        stream = self._events(f"/api/generations/{job_id}/events")
        async with contextlib.aclosing(stream) as events:
            async for data in events:
                job = _job(_decode(_JOB, data))
                if job.terminal:
                    return job
        raise GenqueueError(f"the event stream of job {job_id} ended before the job did")

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
            reason = str(exc) or type(exc).__name__
            raise Unreachable(f"cannot reach genqueue at {self.base_url}: {reason}") from exc
        if resp.status >= 400:
            raise _error(resp.status, raw, path)
        return resp.status, raw

    async def _events(self, path: str) -> AsyncGenerator[bytes, None]:
        """The `data` of each Server-Sent Event at `path` (no overall timeout)."""
        url = self.base_url + path
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total)
        try:
            async with self._open().get(url, timeout=timeout) as resp:
                if resp.status >= 400:
                    raise _error(resp.status, await resp.read(), path)
                data: list[bytes] = []
                async for line in resp.content:
                    line = line.rstrip(b"\r\n")
                    if line.startswith(b"data:"):
                        data.append(line[5:].lstrip(b" "))
                    elif not line and data:
                        yield b"\n".join(data)
                        data = []
        except (TimeoutError, aiohttp.ClientError) as exc:
            reason = str(exc) or type(exc).__name__
            raise Unreachable(f"cannot reach genqueue at {self.base_url}: {reason}") from exc


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
        page = _decode(_DEAD, raw)
        return DeadLetters([_delivery(d) for d in page.items], page.next_cursor)

    async def areplay(self, delivery_id: str) -> Delivery:
        _, raw = await self._client._call("POST", f"/api/webhooks/{delivery_id}/replay")
        return _delivery(_decode(_DELIVERY, raw))


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


# -- the wire to the models --------------------------------------------------------------------


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _job(p: PublicJob) -> Job:
    """A Job from the API's public form. Input images are not echoed by the API (only
    their type and size): they are None here."""
    params = p.parameters
    return Job(
        id=p.id,
        generation_id="",  # not shown by the API
        user_id=p.user_id,
        prompt=p.prompt,
        parameters=GenerationParams(
            params.duration,
            params.aspect_ratio,
            params.resolution,
            params.negative_prompt,
            params.seed,
            sample_count=params.sample_count,
            generate_audio=params.generate_audio,
            person_generation=params.person_generation,  # type: ignore[arg-type]
        ),
        provider=p.provider,
        model=p.model,
        priority=p.priority,
        created_at=_seconds(p.created_at),
        updated_at=_seconds(p.updated_at),
        status=p.status,
        progress=p.progress,
        attempts=p.attempts,
        queue_position=p.queue_position,
        result=None if p.result is None else _result(p.result),
        error=p.error,
    )


def _result(r: PublicResult) -> JobResult:
    videos = [VideoOutput(v.video_url) for v in r.videos] if len(r.videos) > 1 else None
    return JobResult(r.video_url, r.duration, r.processing_time, videos=videos)


def _delivery(d: PublicDelivery) -> Delivery:
    return Delivery(
        id=d.id,
        job_id=d.job_id,
        seq=0,  # not shown by the API
        event=d.payload,
        body=encode_event(d.payload),
        attempts=d.attempts,
        state=d.state,
        last_status=d.last_status,
        last_error=d.last_error,
        created_at=_seconds(d.created_at),
    )


def _decode(decoder: msgspec.json.Decoder[T], raw: bytes) -> T:
    """The answer as the API's type; GenqueueError (showing what came, escaped by the caller
    that prints it) when it is not the API's answer (another server, or a tampered one)."""
    try:
        return decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        try:
            shown: object = orjson.loads(raw)
        except orjson.JSONDecodeError:
            shown = raw[:300]
        message = f"the server's answer is not genqueue's API ({exc}): {shown!r:.300}"
        raise GenqueueError(message) from exc


def _error(status: int, raw: bytes, path: str) -> GenqueueError:
    """The error JobQueue raises for what the server answered."""
    detail: dict[str, Any] = {}
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
        detail = orjson.loads(raw).get("error") or {}
    message = str(detail.get("message") or raw.decode("utf-8", "replace")[:200] or status)
    code = str(detail.get("code") or "")
    if status in (401, 403):
        return Unauthorized(f"the API key was refused: {message}")
    if status == 400 or code == "id_conflict":
        return InvalidRequest(message, field=detail.get("field"), code=code or "invalid_request")
    webhook = path.startswith("/api/webhooks/")
    if status == 404:
        return DeliveryNotFound(message) if webhook else JobNotFound(message)
    if status == 409:
        return DeliveryNotDead(message) if webhook else IllegalTransition(message)
    if status == 503:
        return StorageError(message)
    return GenqueueError(f"genqueue answered {status}: {message}")
