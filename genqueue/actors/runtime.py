"""Durable actors: actors with storage, alarms, an output gate and passivation.

The Cloudflare Durable Objects model on pykka (the actor's side here; activation,
messaging and the alarm scheduler are `ActorSystem`'s, in system.py):
- `ActorSystem.get(cls, key)` activates the one live instance of an id, from storage.
- Every message is sent through the system (`tell`, `ask`, `ask_async`), under one
  lock that passivation also takes, so no message is ever sent to an actor that has
  decided to stop.
- A reply leaves the actor only after the writes of its turn are committed
  (`StateStore.after_commit`): what a caller was told survives `kill -9`.
- One alarm per actor, persisted in the `alarms` table and delivered by the one
  `Scheduler` thread; `alarm()` that raises is retried 2 s, 4 s, 8 s ... 6 times.

`Durable` holds the turn logic, once, for two kinds of actor that supply its mailbox:
`DurableActor` (a `pykka.ThreadingActor`: a thread and pykka's inbox each) and
`HostedActor` (hosting.py: not a pykka actor; its turns run on a shared shard thread).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import pykka

from genqueue.actors.bridge import Outcome, Reply
from genqueue.actors.gate import drop_deferred, release_turn, start_coroutine
from genqueue.actors.records import (
    ActorStorage,
    AlarmInfo,
    AlarmRecord,
    _AlarmFire,
    _Batch,
    _Call,
    _Passivate,
    _TaskDone,
)
from genqueue.errors import GenqueueError
from genqueue.retry import RetryPolicy

if TYPE_CHECKING:
    from genqueue.actors.system import ActorSystem

__all__ = ["ActorHandle", "ActorStorage", "AlarmInfo", "AlarmRecord", "Durable", "DurableActor"]

log = logging.getLogger("genqueue.runtime")

# A failing alarm is retried: 2 s after, then doubling, 6 times at most (DESIGN.md).
ALARM_RETRY = RetryPolicy(initial_interval_s=2.0, backoff_coefficient=2.0, maximum_attempts=7)
ALARM_MAX_RETRIES = ALARM_RETRY.maximum_retries


class ActorHandle(Protocol):
    """What `ActorSystem.get` returns: the part of `pykka.ActorRef` the system uses
    (a `HostedActor`'s handle is a `HostedRef`)."""

    @property
    def actor_urn(self) -> str: ...

    def tell(self, message: Any) -> None: ...

    def is_alive(self) -> bool: ...

    def stop(
        self, *, block: Literal[False], timeout: float | None = None
    ) -> pykka.Future[bool]: ...


class Durable:
    """The turns of a durable actor: storage, alarms, the commit gate, crash and passivation.

    A mixin, not an actor: a kind supplies the mailbox (`actor_urn`, `stop`, `_has_mail`,
    `_take_mail`) and calls `on_start` then `on_receive` per message, one at a time.
    Subclass `DurableActor` (a thread of its own) or `HostedActor` (turns on a shard
    thread), set `kind` and implement `receive`."""

    kind: ClassVar[str] = "actor"
    passivate_when_idle: ClassVar[bool] = True
    cache_keys: ClassVar[int] = 0  # > 0: recent writes of this kind are read from memory
    idle_timeout_s: ClassVar[float | None] = None  # None: the system's idle_timeout_s

    if TYPE_CHECKING:  # supplied by the kind (pykka's, for a DurableActor)
        actor_urn: str

        def stop(self) -> None:
            """Stop once the messages already queued are handled (at once from a turn)."""

    def __init__(self, system: ActorSystem, key: str):
        super().__init__()  # the kind's (pykka.Actor's, or object's)
        self.system = system
        self.key = key
        self.clock = system.clock
        self.storage = ActorStorage(system.store.namespace(self.kind, cache=self.cache_keys), key)
        self._alarm: AlarmRecord | None = None
        self._alarm_handle: int | None = None
        self._deferred: list[Callable[[], None]] = []
        self._tasks: dict[int, Callable[[Outcome], None]] = {}
        self.last_active = self.clock.now()
        self._passivate_after_turn = False
        system.adopt(self)

    def _has_mail(self) -> bool:
        """True if messages wait in this instance's mailbox."""
        raise NotImplementedError

    def _take_mail(self) -> list[Any]:
        """Empty the mailbox (from this actor's own turn): the messages, in order."""
        raise NotImplementedError

    # -- hooks for subclasses -------------------------------------------------------------

    def activate(self) -> None:
        """Load state from `self.storage` (runs on the actor's thread at start)."""

    def receive(self, message: Any) -> Any:
        """Handle one message; the return value is the reply to an `ask`."""
        raise NotImplementedError

    def alarm(self, info: AlarmInfo) -> None:
        """The alarm came due. Raise to have it retried with backoff."""

    def busy(self) -> bool:
        """True while the actor must not be passivated (work in flight)."""
        return bool(self._tasks)

    def before_commit(self) -> None:
        """The turn's messages are handled, its writes not yet queued: the place for work
        done once per turn rather than once per message (a batch of tells is one turn).
        What it writes or sends is part of the turn; if it raises, the turn fails."""

    # -- Durable Objects alarm API ----------------------------------------------------------

    def set_alarm(self, at: float, *, _retry_count: int = 0) -> None:
        if self._alarm is not None and self._alarm.at == at and _retry_count == 0:
            return
        self._alarm = AlarmRecord(at=at, retry_count=_retry_count)
        self.system.alarms.put(self._alarm_key, self._alarm)
        self._schedule_alarm()

    def get_alarm(self) -> float | None:
        return self._alarm.at if self._alarm is not None else None

    def delete_alarm(self) -> None:
        if self._alarm is None:
            return
        self._alarm = None
        self.system.alarms.delete(self._alarm_key)
        self._schedule_alarm()

    @property
    def _alarm_key(self) -> str:
        return f"{self.kind}/{self.key}"

    def _schedule_alarm(self) -> None:
        if self._alarm_handle is not None:
            self.system.scheduler.cancel(self._alarm_handle)
            self._alarm_handle = None
        if self._alarm is not None:
            self._alarm_handle = self.system.schedule_alarm(type(self), self.key, self._alarm.at)

    # -- output gate and the asyncio bridge ---------------------------------------------------

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run `fn` once this turn's writes are durable (for messages that depend on them)."""
        self._deferred.append(fn)

    def tell_after_commit(self, cls: type[Durable], key: str, message: Any) -> None:
        """Send `message` once this turn's writes are durable. On the releaser thread the
        sends of every turn a commit covers leave together (`ActorSystem.tell_many`)."""
        self._deferred.append(functools.partial(self.system.tell, cls, key, message))

    def run_async(
        self, coro: Coroutine[Any, Any, Any], on_done: Callable[[Outcome], None] | str
    ) -> int:
        """Run `coro` on the I/O loop; `on_done(outcome)` later runs as a turn of this actor.

        With a callable, the actor stays live until the outcome arrives. With the name of a
        method, the actor may passivate meanwhile: the outcome activates a new instance
        (a thousand coroutines in flight then cost no threads).
        """
        token = start_coroutine(self, type(self), self.key, coro, on_done)
        if not isinstance(on_done, str):
            self._tasks[token] = on_done
        return token

    def cancel_async(self, token: int) -> None:
        self.system.tasks.cancel(self.system.loop, token)

    def async_tokens(self) -> set[int]:
        """Coroutines started by this id (by any instance) whose outcome has not arrived."""
        return self.system.tasks.owned(type(self), self.key)

    # -- turns -------------------------------------------------------------------------

    def on_start(self) -> None:
        store = self.system.store
        store.begin_turn()
        try:
            self._alarm = self.system.alarms.get(self._alarm_key, AlarmRecord)
            self.activate()
            self._schedule_alarm()
            self._commit_turn()
        except Exception:
            store.discard_turn()
            drop_deferred(self._deferred)
            log.exception("activation of %s/%s failed", self.kind, self.key)
            self.system.forget(type(self), self.key, self)
            raise
        self._end_turn(None, True, None)  # what activation sends leaves once it is durable

    def _commit_turn(self) -> None:
        """Queue this turn's writes as one atomic batch (the reply waits for its commit)."""
        self.before_commit()
        seq = self.system.store.end_turn()
        if seq:
            self.storage.last_seq = seq

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Passivate):
            self._maybe_passivate(message.idle_before)
            return None
        if isinstance(message, _Batch):
            self._receive_batch(message.messages)
            return None
        self.last_active = self.clock.now()
        reply: Reply | None = message.reply if isinstance(message, _Call) else None
        self.system.store.begin_turn()
        try:
            result = self._handle(message)
            self._commit_turn()  # raises once the store has failed: the turn failed too
        except Exception as exc:
            # A failed turn stores nothing; a failed tell (or an unexpected error in an ask)
            # restarts the actor from storage.
            self.system.store.discard_turn()
            drop_deferred(self._deferred)
            self._passivate_after_turn = False
            self._end_turn(reply, False, exc)
            if reply is None or not isinstance(exc, GenqueueError):
                # A refusal (a GenqueueError) is an ask's answer, raised before any change;
                # anything else may have left this instance's memory half-changed.
                self._crash(exc)
            return None
        self._end_turn(reply, True, result)
        if self._passivate_after_turn:
            self._passivate_after_turn = False
            self._maybe_passivate(None)
        return None

    def _handle(self, message: Any) -> Any:
        match message:
            case _Call(body=body):
                return self.receive(body)
            case _AlarmFire(at=at):
                self._fire_alarm(at)
                return None
            case _TaskDone(token=token, on_done=on_done, outcome=outcome):
                self._tasks.pop(token, None)
                self.system.tasks.disown(type(self), self.key, token)
                handler = getattr(self, on_done) if isinstance(on_done, str) else on_done
                return handler(outcome)
            case _:
                return self.receive(message)

    def _receive_batch(self, messages: list[Any]) -> None:
        """Tells that left together, handled in one turn: one commit, one release.

        If one raises, the batch stores nothing and the actor restarts from storage, as on a
        failed tell; the batch's messages then go to the new instance one by one, so only
        the failing one is lost (its own restart), never the others."""
        self.last_active = self.clock.now()
        self.system.store.begin_turn()
        try:
            for message in messages:
                self._handle(message)
            self._commit_turn()
        except Exception as exc:
            self.system.store.discard_turn()
            drop_deferred(self._deferred)
            self._passivate_after_turn = False
            self._crash(exc, resend=messages)
            return
        self._end_turn(None, True, None)
        if self._passivate_after_turn:
            self._passivate_after_turn = False
            self._maybe_passivate(None)

    def _end_turn(self, reply: Reply | None, ok: bool, value: Any) -> None:
        deferred, self._deferred = self._deferred, []
        if reply is None and not deferred:
            return
        # A partial, not a closure: one object per turn, not a function and seven cells for
        # the cyclic GC to track (a turn's allocations are most of what triggers collections).
        seq = self.storage.last_seq
        release = functools.partial(release_turn, self, seq, deferred, reply, ok, value)
        self.system.store.after_commit(seq, release)

    def _crash(self, exc: BaseException, resend: list[Any] | None = None) -> None:
        """An unexpected error (a tell's, or an ask's that is no GenqueueError): stop, and come
        back from storage on the next message.

        The failed message is dropped. `resend`, then whatever was already waiting in this
        instance's inbox, go in that order to the new instance (activated from storage), so
        no turn runs on an instance whose memory the failure may have left half-changed."""
        log.error(
            "%s/%s failed: %r; restarting from storage", self.kind, self.key, exc, exc_info=exc
        )
        waiting = list(resend or [])
        with self.system.lock:  # no message reaches this instance after it is forgotten
            self.system.forget(type(self), self.key, self)
            waiting.extend(self._take_mail())
            with contextlib.suppress(pykka.ActorDeadError):  # the system stopped meanwhile
                for message in waiting:
                    if not isinstance(message, _Passivate):
                        self.system.tell_internal(type(self), self.key, message)
        self.stop()  # after the messages above: nothing reaches it any more

    def _fire_alarm(self, at: float) -> None:
        current = self._alarm
        if current is None or current.at != at:
            return  # replaced or deleted since it was scheduled
        self._alarm = None
        self._alarm_handle = None
        try:
            self.alarm(AlarmInfo(retry_count=current.retry_count))
        except Exception as exc:
            # Forget what the failed alarm wrote or queued; keep only its retry.
            self.system.store.discard_turn()
            self.system.store.begin_turn()
            drop_deferred(self._deferred)
            self._retry_alarm(current, exc)
            return
        if self._alarm is None:
            self.system.alarms.delete(self._alarm_key)

    def _retry_alarm(self, failed: AlarmRecord, exc: Exception) -> None:
        retries = failed.retry_count + 1
        if ALARM_RETRY.gives_up(retries):
            log.error(
                "alarm of %s/%s gave up after %d retries: %r",
                self.kind,
                self.key,
                ALARM_MAX_RETRIES,
                exc,
            )
            self.system.alarms.delete(self._alarm_key)
            return
        delay = ALARM_RETRY.delay_s(retries)
        log.warning(
            "alarm of %s/%s failed (%r); retry %d in %.0f s",
            self.kind,
            self.key,
            exc,
            retries,
            delay,
        )
        self.set_alarm(self.clock.now() + delay, _retry_count=retries)

    def _maybe_passivate(self, idle_before: float | None) -> None:
        with self.system.lock:
            if self._has_mail() or self.busy():
                return
            if idle_before is not None and self.last_active > idle_before:
                return
            self.system.forget(type(self), self.key, self)
        # A pending alarm stays stored and scheduled by address: it wakes a new instance.
        self.stop()

    def passivate(self) -> None:
        """Stop this actor at the end of the turn if nothing else is queued for it."""
        self._passivate_after_turn = True


class DurableActor(Durable, pykka.ThreadingActor):
    """A durable actor with a thread of its own (singletons: the queue, the webhook outbox):
    a pykka actor, its mailbox pykka's inbox, its turns pykka's `on_start`/`on_receive`."""

    def _has_mail(self) -> bool:
        return not self.actor_inbox.empty()

    def _take_mail(self) -> list[Any]:
        inbox = self.actor_inbox  # pykka's ActorInbox: only this actor's turns take from it
        messages = []
        while not inbox.empty():
            messages.append(inbox.get().message)
        return messages
