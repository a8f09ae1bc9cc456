"""`asubmit`'s batching: every submission made in one turn of the event loop goes to the
QueueActor in one message (`SubmitMany`) and one commit; far fewer thread hand-offs per
request under load. Each caller's future settles when the batch's reply is durable.

A batch belongs to one event loop: callers on several loops (threads each running
`asyncio.run`) each get their own, sent and settled on their own loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import weakref
from collections.abc import Callable
from typing import Any

from genqueue.actors.bridge import post
from genqueue.actors.coalesce import Coalescer
from genqueue.actors.messages import Submit, SubmitMany
from genqueue.actors.queue import QueueActor
from genqueue.actors.services import QUEUE
from genqueue.actors.system import ActorSystem
from genqueue.models import Job

__all__ = ["Submissions"]

_Waiter = asyncio.Future[tuple[Job, bool]]


class Submissions:
    """Submissions from the event loop, sent in one message per turn of the loop."""

    def __init__(self, system: Callable[[], ActorSystem]):
        self._system = system  # the open one (raises while the queue is not open)
        self._batches: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, Coalescer[tuple[Submit, _Waiter]]
        ] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        # the last loop's batch (a weak-keyed lookup makes a weakref each time)
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop], Coalescer[Any]] | None = None

    def put(self, submission: Submit) -> _Waiter:
        """From the loop: the future of `(job, created)`."""
        loop = asyncio.get_running_loop()
        last = self._last
        batch = last[1] if last is not None and last[0]() is loop else self._batch_of(loop)
        fut: _Waiter = loop.create_future()
        batch.put((submission, fut))
        return fut

    def _batch_of(self, loop: asyncio.AbstractEventLoop) -> Coalescer[tuple[Submit, _Waiter]]:
        with self._lock:
            batch = self._batches.get(loop)
            if batch is None:
                # the loop held weakly: a batch (the dict's value) must not keep its key alive
                wake = functools.partial(self._wake, weakref.ref(loop))
                batch = self._batches[loop] = Coalescer(wake)
            self._last = (weakref.ref(loop), batch)
            return batch

    def _wake(self, loop_ref: weakref.ref[asyncio.AbstractEventLoop]) -> None:
        loop = loop_ref()
        if loop is not None:  # on that loop's own thread: its first put
            loop.call_soon(self._send, loop)

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._batches[loop].take()
        if not batch:
            return
        message = SubmitMany(tuple(sub for sub, _ in batch))
        waiters = [fut for _, fut in batch]

        def settle(ok: bool, value: Any) -> None:
            for i, fut in enumerate(waiters):
                if fut.done():
                    continue
                if ok and isinstance(value[i], BaseException):  # this one was refused
                    fut.set_exception(value[i])
                elif ok:
                    fut.set_result(value[i])
                else:
                    fut.set_exception(value)

        def reply(ok: bool, value: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                post(loop, settle, ok, value)

        try:
            self._system().send(QueueActor, QUEUE.key, message, reply)
        except Exception as exc:
            settle(False, exc)
