"""The asyncio bridge: coroutines await actors, actors run coroutines, nobody blocks.

- Loop → actor: a reply callback in the message resolves an `asyncio.Future`
  through `loop.call_soon_threadsafe` (pykka's own `await` would block the loop).
- Actor → loop: `call_soon_threadsafe` starts a task; its done-callback only
  hands the outcome back (the runtime tells it to the actor as a message).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from genqueue.actors.coalesce import Coalescer

__all__ = ["LoopLocal", "LoopThread", "Outcome", "Reply", "SyncWaiter", "future_reply", "post"]

T = TypeVar("T")

log = logging.getLogger("genqueue.bridge")

# A reply is called once with (ok, value): value is the result, or the exception.
Reply = Callable[[bool, Any], None]


class Outcome:
    """The result of a coroutine run for an actor: `value` or `error`."""

    __slots__ = ("cancelled", "error", "value")

    def __init__(
        self, value: Any = None, error: BaseException | None = None, cancelled: bool = False
    ):
        self.value = value
        self.error = error
        self.cancelled = cancelled


class _LoopInbox:
    """Calls posted to one loop from other threads, run in order by one loop callback.

    `call_soon_threadsafe` writes to the loop's wake-up pipe on every call; a burst of
    replies and task starts (a group commit releases hundreds at once) then costs one
    write and one wake-up instead of one each.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop_ref = weakref.ref(loop)  # weak, as LoopLocal's values must hold it
        self._calls: Coalescer[tuple[Callable[..., Any], tuple[Any, ...]]] = Coalescer(self._wake)

    def post(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """RuntimeError if the loop is closed (nothing posted will run)."""
        self._calls.put((fn, args))

    def _wake(self) -> None:
        loop = self.loop_ref()
        if loop is None:
            raise RuntimeError("the event loop is gone")
        loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        for fn, args in self._calls.take():
            try:
                fn(*args)
            except Exception as exc:
                asyncio.get_running_loop().call_exception_handler(
                    {"message": f"posted call {fn!r} failed", "exception": exc}
                )


class LoopLocal(Generic[T]):
    """A value per event loop, made by `make(loop)` on first use and forgotten once the loop
    is collected. Found by the loop's id (a weak-keyed dict makes a weakref for every
    lookup, and every reply, task start and submission looks one up); the loop is held
    weakly, and so must the values hold it."""

    def __init__(self, make: Callable[[asyncio.AbstractEventLoop], T]):
        self._make = make
        self._values: dict[int, tuple[weakref.ref[asyncio.AbstractEventLoop], T]] = {}
        self._lock = threading.Lock()

    def get(self, loop: asyncio.AbstractEventLoop) -> T:
        entry = self._values.get(id(loop))
        if entry is None or entry[0]() is not loop:
            entry = self._add(loop)
        return entry[1]

    def _add(self, loop: asyncio.AbstractEventLoop) -> tuple[Any, T]:
        key = id(loop)
        with self._lock:
            entry = self._values.get(key)
            if entry is None or entry[0]() is not loop:
                ref = weakref.ref(loop, functools.partial(self._forget, key))
                entry = self._values[key] = (ref, self._make(loop))
            return entry

    def _forget(self, key: int, ref: weakref.ref[asyncio.AbstractEventLoop]) -> None:
        """The loop was collected. No lock: a collection (and so this callback) may run on a
        thread inside `_add`, holding `_lock`. The id is not reused before this runs, so the
        entry is this loop's or a later one's, which stays."""
        entry = self._values.get(key)
        if entry is not None and entry[0] is ref:
            self._values.pop(key, None)


_inboxes: LoopLocal[_LoopInbox] = LoopLocal(_LoopInbox)


def post(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """`loop.call_soon_threadsafe(fn, *args)`, batched: calls posted from any thread run in
    the order posted, many per wake-up. RuntimeError if the loop is closed."""
    _inboxes.get(loop).post(fn, args)


def future_reply(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.Future[Any], Reply]:
    """An asyncio future and the thread-safe reply callback that settles it."""
    fut: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def reply(ok: bool, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            post(loop, settle, ok, value)

    return fut, reply


class SyncWaiter:
    """A reply callback for a plain thread: `wait()` returns the value or raises."""

    __slots__ = ("_done", "_ok", "_value")

    def __init__(self) -> None:
        self._done = threading.Event()
        self._ok = False
        self._value: Any = None

    def __call__(self, ok: bool, value: Any) -> None:
        self._ok, self._value = ok, value
        self._done.set()

    def wait(self, timeout_s: float | None) -> Any:
        if not self._done.wait(timeout_s):
            raise TimeoutError(f"no answer within {timeout_s} s")
        if not self._ok:
            raise self._value
        return self._value


def spawn(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, Any],
    on_done: Callable[[Outcome], None],
    tasks: dict[int, asyncio.Task[Any]],
    token: int,
    cancelled: set[int] | None = None,
) -> None:
    """From any thread: run `coro` on `loop`; `on_done(Outcome)` runs on the loop after.

    A token found in `cancelled` (cancelled before it started) starts cancelled.
    """
    post(loop, _start, loop, coro, on_done, tasks, token, cancelled)


def _start(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, Any],
    on_done: Callable[[Outcome], None],
    tasks: dict[int, asyncio.Task[Any]],
    token: int,
    cancelled: set[int] | None,
) -> None:
    task = loop.create_task(coro)
    tasks[token] = task
    if cancelled is not None and token in cancelled:
        cancelled.discard(token)
        task.cancel()
    task.add_done_callback(functools.partial(_finished, on_done, tasks, token))


def _finished(
    on_done: Callable[[Outcome], None],
    tasks: dict[int, asyncio.Task[Any]],
    token: int,
    task: asyncio.Task[Any],
) -> None:
    tasks.pop(token, None)
    if task.cancelled():
        on_done(Outcome(cancelled=True))
    elif task.exception() is not None:
        on_done(Outcome(error=task.exception()))
    else:
        on_done(Outcome(value=task.result()))


class LoopThread:
    """An asyncio loop on its own thread, for embedding in a program without one."""

    def __init__(self, name: str = "genqueue-io") -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> asyncio.AbstractEventLoop:
        self._thread.start()
        self._ready.wait()
        return self.loop

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float | None = None) -> Any:
        """Run `coro` on the loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        try:
            self.run(shutdown(), timeout_s=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()
