"""`asubmit`'s batching: every submission made in one turn of the event loop goes to the
QueueActor in one message (`SubmitMany`) and one commit; far fewer thread hand-offs per
request under load. Each caller's future settles when the batch's reply is durable.

A batch belongs to one event loop: callers on several loops (threads each running
`asyncio.run`) each get their own, sent and settled on their own loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import Callable
from typing import Any

from genqueue.actors.bridge import LoopLocal, post
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
        self._batches: LoopLocal[Coalescer[tuple[Submit, _Waiter]]] = LoopLocal(self._new_batch)

    def put(self, submission: Submit) -> _Waiter:
        """From the loop: the future of `(job, created)`."""
        loop = asyncio.get_running_loop()
        fut: _Waiter = loop.create_future()
        self._batches.get(loop).put((submission, fut))
        return fut

    def _new_batch(self, loop: asyncio.AbstractEventLoop) -> Coalescer[tuple[Submit, _Waiter]]:
        # the loop held weakly: a batch must not keep its loop alive
        return Coalescer(functools.partial(self._wake, weakref.ref(loop)))

    def _wake(self, loop_ref: weakref.ref[asyncio.AbstractEventLoop]) -> None:
        loop = loop_ref()
        if loop is not None:  # on that loop's own thread: its first put
            loop.call_soon(self._send, loop)

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._batches.get(loop).take()
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
