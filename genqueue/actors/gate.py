"""The output gate: what a turn sends and answers leaves only once its writes are durable;
a coroutine's outcome comes back to its actor as a message."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from genqueue.actors.bridge import Outcome, Reply, spawn
from genqueue.actors.records import _TaskDone

if TYPE_CHECKING:
    from genqueue.actors.runtime import Durable
    from genqueue.actors.system import ActorSystem

__all__ = ["CoroutineStart", "drop_deferred", "release_turn", "start_coroutine", "task_back"]

log = logging.getLogger("genqueue.runtime")


class CoroutineStart:
    """A turn's deferred start of a coroutine. A turn whose output never leaves (it failed,
    or its commit did) closes the coroutine it made, which then never ran: no coroutine is
    left to be collected un-awaited, and its token is given up (`forget`), so its actor is
    not taken for one with a coroutine in flight (`async_tokens`)."""

    __slots__ = ("coro", "forget", "start")

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        start: Callable[[], None],
        forget: Callable[[], None],
    ):
        self.coro = coro
        self.start = start
        self.forget = forget

    def __call__(self) -> None:
        try:
            self.start()
        except BaseException:  # nothing will run it (a closed loop)
            self.discard()
            raise

    def discard(self) -> None:
        self.coro.close()
        self.forget()


def drop_deferred(deferred: list[Callable[[], None]]) -> None:
    """A turn's output that will never leave: forget it, closing the coroutines it made."""
    for fn in deferred:
        if isinstance(fn, CoroutineStart):
            fn.discard()
    deferred.clear()


def release_turn(
    actor: Durable,
    seq: int,
    deferred: list[Callable[[], None]],
    reply: Reply | None,
    ok: bool,
    value: Any,
) -> None:
    """A committed turn's output: its deferred sends, then its reply (the output gate).

    Called once the commit covering `seq` is done, or once the store failed: a turn whose
    writes were committed succeeded even if a later commit failed before this ran."""
    system = actor.system
    failure = system.store.failure
    if failure is not None and seq > system.store.durable_seq:
        drop_deferred(deferred)
        if reply is not None:
            reply(False, failure)
        return
    for fn in deferred:
        try:
            fn()
        except Exception:
            log.exception("deferred send of %s/%s failed", actor.kind, actor.key)
    if reply is not None:
        system.reply(reply, ok, value)


def task_back(
    system: ActorSystem,
    cls: type[Durable],
    key: str,
    token: int,
    on_done: Callable[[Outcome], None] | str,
    outcome: Outcome,
) -> None:
    """A coroutine's outcome, back to the actor that started it as a message (on the loop)."""
    system.tell_from_loop(cls, key, _TaskDone(token, on_done, outcome))


def start_coroutine(
    turn: Durable,
    cls: type[Durable],
    key: str,
    coro: Coroutine[Any, Any, Any],
    on_done: Callable[[Outcome], None] | str,
) -> int:
    """Run `coro` on the I/O loop for the actor `cls`/`key` once `turn`'s writes are durable
    (an external effect is output too); its outcome comes back to that actor as a message.
    `turn` is usually that actor's own; the queue's turn starts a job it just stored as
    started, so the job's actor runs no turn of its own before the start."""
    system = turn.system
    loop = system.loop
    if loop is None:
        raise RuntimeError("the actor system has no I/O loop")
    token = system.tasks.next_token()
    system.tasks.own(cls, key, token)
    back = functools.partial(task_back, system, cls, key, token, on_done)  # on the loop
    start = functools.partial(
        spawn, loop, coro, back, system.tasks.running, token, system.tasks.cancelled_early
    )
    forget = functools.partial(system.tasks.disown, cls, key, token)
    turn.after_commit(CoroutineStart(coro, start, forget))
    return token
