"""ActorSystem: activation, messaging, alarms and passivation of durable actors.

- `get(cls, key)` activates the one live instance of an id from storage (thread-safe);
  a `HostedActor` runs its turns on a shard thread (hosting.py), a `DurableActor` on its own.
- Every message goes through the system (`tell`, `tell_many`, `ask`, `ask_async`, `send`),
  under the lock that passivation also takes: no message reaches an actor that decided to
  stop. What a group of committed turns sends leaves together, before their replies.
- One `Scheduler` thread delivers every alarm; a sweep passivates idle actors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any, cast

import pykka

from genqueue.actors.bridge import Reply, SyncWaiter, future_reply
from genqueue.actors.coalesce import Coalescer
from genqueue.actors.hosting import HostedActor, Shards
from genqueue.actors.records import AlarmTable, _AlarmFire, _Batch, _Call, _Passivate
from genqueue.actors.runtime import ActorHandle, Durable, DurableActor
from genqueue.actors.scheduler import Scheduler
from genqueue.actors.services import QueueServices
from genqueue.actors.tasks import TASK_CANCELLED, Tasks
from genqueue.clock import Clock, RealClock
from genqueue.storage.state import StateStore

__all__ = ["TASK_CANCELLED", "ActorSystem"]  # TASK_CANCELLED: from tasks.py

log = logging.getLogger("genqueue.runtime")


class _Release:
    """What a group of after-commit callbacks sends and answers (sent at its end)."""

    __slots__ = ("replies", "tells")

    def __init__(self) -> None:
        self.tells: list[tuple[type[Durable], str, Any]] = []
        self.replies: list[tuple[Reply, bool, Any]] = []


class _ReleaserLocal(threading.local):
    """Per thread: the group of after-commit callbacks being gathered (the releaser's)."""

    release: _Release | None = None


class ActorSystem:
    """Activation, messaging, alarms and passivation for durable actors."""

    def __init__(
        self,
        store: StateStore,
        *,
        clock: Clock | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        idle_timeout_s: float = 60.0,
        shards: int = 1,
        services: QueueServices | None = None,
    ):
        self.store = store
        self.services = services  # what the queue's actors share (None: a bare system)
        self.clock: Clock = clock or RealClock()
        self.loop = loop  # the I/O loop, set before the first run_async
        self.idle_timeout_s = idle_timeout_s
        self.alarms = AlarmTable(store.namespace("alarms"))
        self.scheduler = Scheduler(self.clock)
        self.lock = threading.RLock()
        self.tasks = Tasks(self.lock)  # the coroutines actors started (run_async)
        self._activating: dict[tuple[type[Durable], str], threading.Event] = {}
        # One shard by default: the turns are Python under one GIL, and the one SQLite
        # worker serves every read in turn, so a second shard ran nothing in parallel; it
        # only added a thread to every hand-off (a 10,000-job drain: 7% faster, 8% less CPU).
        self.shards = Shards(shards)
        self._live: dict[tuple[type[Durable], str], ActorHandle] = {}
        self._actors: dict[tuple[type[Durable], str], Durable] = {}
        self._kinds: dict[str, type[Durable]] = {}
        self._stopped = False
        # What the I/O loop's current iteration sends: it leaves together at its end.
        self._loop_tells: Coalescer[tuple[type[Durable], str, Any]] = Coalescer(
            self._wake_loop_tells
        )
        self._local = _ReleaserLocal()
        store.set_release_context(self._releasing)

    # -- lifecycle ---------------------------------------------------------------------------

    def register(self, *classes: type[Durable]) -> None:
        for cls in classes:
            self._kinds[cls.kind] = cls

    def queue_services(self) -> QueueServices:
        """The services the queue's actors were given (a bare system has none)."""
        if self.services is None:
            raise RuntimeError("this actor system was built without queue services")
        return self.services

    def kind_of(self, kind: str) -> type[Durable]:
        """The registered class of actor `kind` (an Address's kind)."""
        return self._kinds[kind]

    def start(self) -> None:
        """Start the scheduler and re-arm every stored alarm (due ones fire now)."""
        for address, rec in self.alarms.load():
            kind, _, key = address.partition("/")
            cls = self._kinds.get(kind)
            if cls is None:
                log.warning("stored alarm for unknown actor kind %r ignored", kind)
                continue
            self.schedule_alarm(cls, key, rec.at)
        self.scheduler.start()
        self._schedule_sweep()

    def stop(self) -> None:
        """Stop every actor (their stored state stays), then the scheduler."""
        with self.lock:
            self._stopped = True
            refs = list(self._live.values())
            self._live.clear()
            self._actors.clear()
        stops = [ref.stop(block=False) for ref in refs]  # all at once, then wait for each
        for stop in stops:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                stop.get(timeout=10)
        self.shards.stop(timeout_s=10)  # after the hosted actors' stops have run
        self.scheduler.stop()
        self.tasks.cancel_all(self.loop)

    # -- activation ----------------------------------------------------------------------------

    def get(self, cls: type[Durable], key: str) -> ActorHandle:
        """The one live instance for `key`, activated from storage if needed.

        The thread that finds no instance starts one outside the system lock (a thread start
        costs ~0.4 ms); others asking for the same key meanwhile wait for that one.
        """
        if "/" in key:
            raise ValueError(f"actor key {key!r} may not contain '/'")
        if issubclass(cls, HostedActor):  # the kind decides how it is activated
            return self._get_hosted(cls, key)
        while True:
            with self.lock:
                ref = self._live.get((cls, key))
                if ref is not None and ref.is_alive():
                    return ref
                if self._stopped:
                    raise pykka.ActorDeadError("the actor system is stopped")
                pending = self._activating.get((cls, key))
                leader = pending is None
                if pending is None:
                    pending = self._activating[(cls, key)] = threading.Event()
            if not leader:
                pending.wait(30)
                continue
            ref = None
            try:
                ref = cast("type[DurableActor]", cls).start(self, key)  # a pykka actor
            finally:
                with self.lock:
                    del self._activating[(cls, key)]
                    if ref is not None:
                        self._live[(cls, key)] = ref
                pending.set()
            return ref

    def _get_hosted(self, cls: type[HostedActor], key: str) -> ActorHandle:
        """Activation of a hosted actor: no thread to start, so under the lock (its shard
        runs on_start before its first message)."""
        with self.lock:
            ref = self._live.get((cls, key))
            if ref is not None and ref.is_alive():
                return ref
            if self._stopped:
                raise pykka.ActorDeadError("the actor system is stopped")
            ref = self._live[(cls, key)] = cls.start(self, key)
            return ref

    def adopt(self, actor: Durable) -> None:
        """Called by a new instance: the sweep reads its `last_active`."""
        self._actors[(type(actor), actor.key)] = actor

    def forget(self, cls: type[Durable], key: str, actor: Durable) -> None:
        with self.lock:
            ref = self._live.get((cls, key))
            if ref is not None and ref.actor_urn == actor.actor_urn:
                del self._live[(cls, key)]
            if self._actors.get((cls, key)) is actor:
                del self._actors[(cls, key)]

    def live_count(self) -> int:
        return len(self._live)  # a dict's len is atomic: no lock for a figure read per turn

    # -- messaging -------------------------------------------------------------------------------

    def tell(self, cls: type[Durable], key: str, message: Any) -> None:
        release = self._local.release
        if release is not None:  # keep the order of the group's sends (see tell_many)
            release.tells.append((cls, key, message))
        else:
            self.tell_internal(cls, key, message)

    def tell_internal(
        self, cls: type[Durable], key: str, message: Any, *, activate: bool = True
    ) -> None:
        while True:
            if activate:
                ref = self.get(cls, key)
            with self.lock:
                live = self._live.get((cls, key))
                if not activate:
                    if live is None:
                        return
                    ref = live
                # Under the lock that passivation takes: the instance has not decided to stop.
                if live is ref:
                    ref.tell(message)
                    return

    def tell_many(self, messages: list[tuple[type[Durable], str, Any]]) -> None:
        """Send each `(cls, key, message)`, in order. A hosted actor gets each in its inbox
        (its shard is woken once for all of them); a thread actor gets its messages as one
        batch (one turn): one queue hand-off (and wake-up) for many messages.

        On the releaser thread, while it runs a group of after-commit callbacks, sends are
        gathered and leave together at the end of the group, before its replies."""
        release = self._local.release
        if release is not None:
            release.tells.extend(messages)
            return
        others: dict[tuple[type[Durable], str], list[Any]] = {}
        # the lock that passivation takes: no instance stops meanwhile; the shards are
        # woken once, after the lock is released
        with self.shards.held(), self.lock:
            for cls, key, message in messages:
                if issubclass(cls, HostedActor):
                    self._get_hosted(cls, key).tell(message)
                else:
                    others.setdefault((cls, key), []).append(message)
        for (cls, key), bodies in others.items():
            self.tell_internal(cls, key, bodies[0] if len(bodies) == 1 else _Batch(bodies))

    def reply(self, reply: Reply, ok: bool, value: Any) -> None:
        """Answer an ask; on the releaser thread, after the group's sends have left."""
        release = self._local.release
        if release is not None:
            release.replies.append((reply, ok, value))
        else:
            reply(ok, value)

    @contextlib.contextmanager
    def _releasing(self) -> Iterator[None]:
        """Around a group of after-commit callbacks (StateStore's release context)."""
        release = self._local.release = _Release()
        try:
            yield
        finally:
            self._local.release = None
            try:
                if release.tells:
                    self.tell_many(release.tells)
            except pykka.ActorDeadError:
                pass  # the system stopped meanwhile
            finally:
                for reply, ok, value in release.replies:
                    try:
                        reply(ok, value)
                    except Exception:
                        log.exception("a reply failed")

    def tell_from_loop(self, cls: type[Durable], key: str, message: Any) -> None:
        """`tell`, from the I/O loop's thread: what this loop iteration sends leaves together
        at its end (`tell_many`)."""
        self._loop_tells.put((cls, key, message))

    def _wake_loop_tells(self) -> None:
        assert self.loop is not None
        self.loop.call_soon(self._flush_loop_tells)

    def _flush_loop_tells(self) -> None:
        tells = self._loop_tells.take()
        try:
            self.tell_many(tells)
        except pykka.ActorDeadError:
            pass  # the system stopped meanwhile
        except Exception:  # one bad tell must not lose the others (task outcomes): each alone
            for cls, key, message in tells:  # (one sent already comes twice: a job's
                with contextlib.suppress(pykka.ActorDeadError):  # outcome is then ignored)
                    try:
                        self.tell_many([(cls, key, message)])
                    except Exception:
                        log.exception("a tell to %s/%s failed", cls.kind, key)

    def ask(self, cls: type[Durable], key: str, message: Any, timeout_s: float = 30.0) -> Any:
        """Send `message` and wait (in a plain thread) for the gated reply."""
        waiter = SyncWaiter()
        self.tell_internal(cls, key, _Call(message, waiter))
        return waiter.wait(timeout_s)

    async def ask_async(self, cls: type[Durable], key: str, message: Any) -> Any:
        """Send `message` and await the reply without blocking the loop."""
        fut, reply = future_reply(asyncio.get_running_loop())
        self.tell_internal(cls, key, _Call(message, reply))
        return await fut

    def send(self, cls: type[Durable], key: str, message: Any, reply: Reply) -> None:
        """Send `message`; `reply(ok, value)` is called once the answer is durable."""
        self.tell_internal(cls, key, _Call(message, reply))

    def send_after_writes(self, cls: type[Durable], key: str, message: Any, reply: Reply) -> None:
        """`send`, once every write queued so far is committed and the messages its turn
        sent have left: the answer then reflects every change another thread could have
        read. (A job read as completed has told the queue so in the same turn; a status
        asked after that read is answered after the queue took the news.)

        Queued as a reply at the end of the release that covers the last write: replies
        leave after the sends of their group, so `message` lands in the actor's inbox
        behind them."""
        store = self.store

        def release() -> None:
            self.reply(lambda ok, value: self.send(cls, key, message, reply), True, None)

        store.after_commit(store.write_seq, release)

    def ask_after_writes(
        self, cls: type[Durable], key: str, message: Any, timeout_s: float = 30.0
    ) -> Any:
        """`ask`, sent as `send_after_writes` sends."""
        waiter = SyncWaiter()
        self.send_after_writes(cls, key, message, waiter)
        return waiter.wait(timeout_s)

    async def ask_async_after_writes(self, cls: type[Durable], key: str, message: Any) -> Any:
        """`ask_async`, sent as `send_after_writes` sends."""
        fut, reply = future_reply(asyncio.get_running_loop())
        self.send_after_writes(cls, key, message, reply)
        return await fut

    # -- alarms and passivation ---------------------------------------------------

    def schedule_alarm(self, cls: type[Durable], key: str, at: float) -> int:
        return self.scheduler.call_at(at, lambda: self._deliver_alarm(cls, key, at))

    def _deliver_alarm(self, cls: type[Durable], key: str, at: float) -> None:
        with contextlib.suppress(pykka.ActorDeadError):  # stopping: the alarm stays stored
            self.tell_internal(cls, key, _AlarmFire(at))

    def _idle_timeout(self, cls: type[Durable]) -> float:
        return cls.idle_timeout_s if cls.idle_timeout_s is not None else self.idle_timeout_s

    def _schedule_sweep(self) -> None:
        shortest = min(
            [self._idle_timeout(c) for c in self._kinds.values()] + [self.idle_timeout_s]
        )
        self.scheduler.call_at(self.clock.now() + max(shortest / 2, 0.001), self._sweep)

    def _sweep(self) -> None:
        """Ask every actor idle for longer than its idle timeout to passivate."""
        now = self.clock.now()
        with self.lock:
            if self._stopped:
                return
            for (cls, key), ref in list(self._live.items()):
                actor = self._actors.get((cls, key))
                cutoff = now - self._idle_timeout(cls)
                if cls.passivate_when_idle and actor is not None and actor.last_active <= cutoff:
                    ref.tell(_Passivate(idle_before=cutoff))
        self._schedule_sweep()
