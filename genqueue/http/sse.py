"""Server-Sent Events: a job's status and progress as they happen.

`JobEvents` is the app's one subscriber to the JobQueue. Its callback runs on the
queue's event thread and only hands a job to the loop (`call_soon_threadsafe`)
when someone listens to it; the loop fans it out to the listeners' asyncio queues.

A stream (`stream_job`) sends the job as it is now, then an event per change of
status (`event: status`) or progress (`event: progress`), each with the whole
public job as `data`, and ends after the terminal event. A comment line every
`HEARTBEAT_S` keeps proxies from closing a quiet stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web

from genqueue import Job
from genqueue.wire import encode, public_job

__all__ = ["JobEvents", "open_stream", "stream_job"]

HEARTBEAT_S = 15.0
_CLOSED = None


class JobEvents:
    """Fans job changes out to listeners on the loop; `listen(None)` hears every job."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._by_job: dict[str | None, set[asyncio.Queue[Job | None]]] = {}
        self._closed = False

    def publish(self, job: Job) -> None:
        """From any thread: deliver `job` to its listeners (cheap when nobody listens)."""
        if job.id in self._by_job or None in self._by_job:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                self._loop.call_soon_threadsafe(self._dispatch, job)

    def _dispatch(self, job: Job) -> None:
        for key in (job.id, None):
            for q in self._by_job.get(key, ()):
                q.put_nowait(job)

    @contextlib.contextmanager
    def listen(self, job_id: str | None) -> Iterator[asyncio.Queue[Job | None]]:
        """An asyncio queue of the job's changes (None once the server shuts down)."""
        q: asyncio.Queue[Job | None] = asyncio.Queue()
        if self._closed:
            q.put_nowait(_CLOSED)
        self._by_job.setdefault(job_id, set()).add(q)
        try:
            yield q
        finally:
            listeners = self._by_job.get(job_id)
            if listeners is not None:
                listeners.discard(q)
                if not listeners:
                    del self._by_job[job_id]

    def listening(self) -> int:
        """How many listeners are registered (for tests and the dashboard)."""
        return sum(len(listeners) for listeners in self._by_job.values())

    def close(self) -> None:
        """End every stream (on server shutdown)."""
        self._closed = True
        for listeners in self._by_job.values():
            for q in listeners:
                q.put_nowait(_CLOSED)


async def open_stream(request: web.Request) -> web.StreamResponse:
    """Start a Server-Sent Events response (no caching, no proxy buffering)."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    return response


def _frame(event: str, event_id: int, job: Job) -> bytes:
    data = encode(public_job(job))
    return b"event: %s\nid: %d\ndata: %s\n\n" % (event.encode(), event_id, data)


async def stream_job(
    request: web.Request,
    events: JobEvents,
    current: Callable[[], Awaitable[Job]],
) -> web.StreamResponse:
    """Stream one job's changes; `current()` reads it (raising JobNotFound if unseen). The
    jobs come from the queue, so a local video's URL is signed afresh in each event."""
    with events.listen(request.match_info["id"]) as changes:
        job = await current()  # listening first: no change slips between read and stream
        response = await open_stream(request)
        try:
            await _send_changes(response, job, changes)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away: nothing to tell it
        return response


async def _send_changes(
    response: web.StreamResponse,
    job: Job,
    changes: asyncio.Queue[Job | None],
) -> None:
    n = 1
    await response.write(_frame("status", n, job))
    last = job
    while not last.terminal:
        try:
            nxt = await asyncio.wait_for(changes.get(), HEARTBEAT_S)
        except TimeoutError:
            await response.write(b": keepalive\n\n")
            continue
        if nxt is _CLOSED:
            return
        if nxt.updated_at < last.updated_at:
            continue  # older than what was sent (read before its event arrived)
        if nxt.status != last.status:
            kind = "status"
        elif nxt.progress > last.progress:
            kind = "progress"
        else:
            continue
        n += 1
        await response.write(_frame(kind, n, nxt))
        last = nxt
