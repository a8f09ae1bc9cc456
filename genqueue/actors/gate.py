"""The output gate: what a turn sends and answers leaves only once its writes are durable;
a coroutine's outcome comes back to its actor as a message."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from genqueue.actors.bridge import Outcome, Reply
from genqueue.actors.records import _TaskDone

if TYPE_CHECKING:
    from genqueue.actors.runtime import DurableActor
    from genqueue.actors.system import ActorSystem

__all__ = ["release_turn", "task_back"]

log = logging.getLogger("genqueue.runtime")


def release_turn(
    actor: DurableActor,
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
    cls: type[DurableActor],
    key: str,
    token: int,
    on_done: Callable[[Outcome], None] | str,
    outcome: Outcome,
) -> None:
    """A coroutine's outcome, back to the actor that started it as a message (on the loop)."""
    system.tell_from_loop(cls, key, _TaskDone(token, on_done, outcome))
