"""Hosted actors: many durable actors of one kind served by a few shard threads (one by default).

A pykka thread per actor costs ~0.4 ms to start and ~22 KiB, and wake-ups slow down
as threads pile up (measured-facts.md). A `HostedActor` (the JobActor: one per job in
flight) has no thread: its turns run on one of a fixed set of shard threads (pykka
actors), chosen by key. It is not a pykka actor either: `pykka.Actor.__init__` builds a
`threading.Event` (a Condition, a lock, a deque), an `ActorRef` with a weakref and a
uuid per instance, and its inbox pointed back at the actor (a cycle: a passivated job
waited for the cyclic GC). Measured: activating a job ~10 us instead of ~3.7 us, 16
GC-tracked objects per live job instead of 7, a 10,000-job drain ~20% slower. So a
hosted actor is a plain object with what the system uses of pykka's actor model:
- a mailbox: a deque on the instance; a send appends and, if the actor was idle, puts
  it in its shard's ready line (a `Coalescer`), once however much mail arrives;
- a handle, `HostedRef` (`tell`, `is_alive`, `stop`, `actor_urn`, as `pykka.ActorRef`),
  that holds the actor and nothing holds back (no reference cycle: a passivated actor
  is freed at once, not by a GC pass);
- pykka's `ThreadingFuture` for what answers a `stop`, and its `ActorDeadError`.

Each instance still sees its messages one at a time and in order, its `on_start` before
the first, and live threads stay constant however many jobs are in flight. Singletons
(the QueueActor, the WebhookActor) are `DurableActor`s: pykka actors, a thread each.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import threading
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import pykka

from genqueue.actors.coalesce import Coalescer
from genqueue.actors.records import _Call, _Passivate
from genqueue.actors.runtime import Durable
from genqueue.errors import StorageError

if TYPE_CHECKING:
    from genqueue.actors.system import ActorSystem

__all__ = ["HostedActor", "HostedRef", "Shards", "shard_of"]

log = logging.getLogger("genqueue.runtime")

TURNS_PER_VISIT = 64  # then the actor goes to the back of its shard's ready line

_urns = itertools.count(1)


def shard_of(key: str, shards: int) -> int:
    return zlib.crc32(key.encode()) % shards


class _Stop:
    """A stop behind the mail already queued (`HostedRef.stop`): answers True once done."""

    __slots__ = ("future",)

    def __init__(self, future: pykka.Future[bool] | None) -> None:
        self.future = future

    def answer(self) -> None:
        if self.future is not None:
            self.future.set(True)


class HostedActor(Durable):
    """A durable actor whose turns run on a shard thread shared with others of its kind.

    Not a pykka actor (see the module's docstring): `start` returns a `HostedRef`; mail
    goes to `_mail`, and the shard runs `visit` while there is some."""

    def __init__(self, system: ActorSystem, key: str):
        self.actor_urn = f"hosted:{next(_urns)}"  # unique per instance, as pykka's urn
        self.stopped = False
        self._mail: collections.deque[Any] = collections.deque()
        self._line = system.shards.line_for(key)
        self._scheduled = False  # in its line's ready list (under the line's lock)
        self._started = False
        self._visiting = False
        super().__init__(system, key)

    @classmethod
    def start(cls, system: ActorSystem, key: str) -> HostedRef:
        """A new instance, idle until its first message (then its shard runs `on_start`).
        Not entered in pykka's `ActorRegistry`: it is not a pykka actor."""
        return HostedRef(cls(system, key))

    def post(self, message: Any) -> None:
        """Put `message` in the mailbox (any thread); an idle actor joins its ready line."""
        line = self._line
        with line.lock:
            self._mail.append(message)
            if self._scheduled:
                return
            self._scheduled = True
        self.system.shards.schedule(line, self)

    def _has_mail(self) -> bool:
        return bool(self._mail)

    def _take_mail(self) -> list[Any]:
        """The waiting mail, in order; a stop waiting behind it is answered (this instance
        stops now: `_crash`)."""
        messages = []
        while self._mail:
            message = self._mail.popleft()
            if type(message) is _Stop:
                message.answer()
            else:
                messages.append(message)
        return messages

    def stop(self) -> None:
        """From this actor's own turn (passivation, a crash: it is forgotten, its mailbox
        empty or drained) it stops at once; otherwise behind the mail already queued."""
        if self._visiting:
            self.stopped = True
        else:
            self.post(_Stop(None))

    def visit(self) -> None:
        """Run the turns waiting in the mailbox (on the shard thread), `on_start` first."""
        self._visiting = True
        try:
            if not self._started:
                self._started = True
                try:
                    self.on_start()
                except Exception:  # logged by on_start; the instance is forgotten
                    self.stopped = True
            mail = self._mail
            for _ in range(TURNS_PER_VISIT):
                if not mail:
                    break
                message = mail.popleft()
                if type(message) is _Stop:
                    self.stopped = True
                    message.answer()
                elif self.stopped:
                    self._refuse(message)
                else:
                    self._turn(message)
        finally:
            self._visiting = False
        line = self._line
        with line.lock:
            self._scheduled = again = bool(mail)
        if again:  # mail left: back of the line, behind the shard's other actors
            line.ready.put(self)

    def _turn(self, message: Any) -> None:
        try:
            self.on_receive(message)  # an ask's reply goes through the output gate
        except Exception:  # never let one actor's turn stop the shard and its other actors
            log.exception("turn of %s/%s failed", self.kind, self.key)

    def _refuse(self, message: Any) -> None:
        """Mail for an instance that failed to start or stopped: one of our asks gets the
        error (its caller must not wait forever); a tell is dropped, as one to a crashed
        thread actor is."""
        if isinstance(message, _Call):
            failure = self.system.store.failure
            error: Exception = (
                StorageError(f"state store failed: {failure}")
                if failure is not None
                else pykka.ActorDeadError(f"{self.kind}/{self.key} is unavailable")
            )
            message.reply(False, error)
        elif not isinstance(message, _Passivate):
            log.warning("message to %s/%s dropped: the instance stopped", self.kind, self.key)


class HostedRef:
    """A `HostedActor`'s handle, as `pykka.ActorRef` is a pykka actor's (what the system
    uses of it). It holds the actor; the actor does not hold it."""

    __slots__ = ("_actor",)

    def __init__(self, actor: HostedActor) -> None:
        self._actor = actor

    @property
    def actor_urn(self) -> str:
        return self._actor.actor_urn

    def is_alive(self) -> bool:
        return not self._actor.stopped

    def tell(self, message: Any) -> None:
        actor = self._actor
        if actor.stopped:
            raise pykka.ActorDeadError(f"{actor.kind}/{actor.key} ({actor.actor_urn}) stopped")
        actor.post(message)

    def stop(self, *, block: Literal[False], timeout: float | None = None) -> pykka.Future[bool]:
        """As `pykka.ActorRef.stop(block=False)`: a future of True once the mail already
        queued is handled and the actor stopped, of False if it was stopped already."""
        future: pykka.Future[bool] = pykka.ThreadingFuture()
        if self._actor.stopped:
            future.set(False)
        else:
            self._actor.post(_Stop(future))
        return future


class _Shard(pykka.ThreadingActor):
    """One thread running the turns of the hosted actors whose keys hash to it."""

    def __init__(self, ready: Coalescer[HostedActor]) -> None:
        super().__init__()
        self.ready = ready

    def on_receive(self, message: Any) -> Any:
        for actor in self.ready.take():
            try:
                actor.visit()
            except Exception:
                log.exception("visit of %s/%s failed", actor.kind, actor.key)
        return None


class _Line:
    """A shard's ready line: actors with mail; the first one in a batch wakes the shard.
    `lock` guards the `_scheduled` flag of the shard's actors (one lock, not one each)."""

    __slots__ = ("lock", "ready", "ref")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ready: Coalescer[HostedActor] = Coalescer(self._wake)
        self.ref = _Shard.start(self.ready)

    def _wake(self) -> None:
        self.ref.tell(None)


class _Held(threading.local):
    """Per thread: the actors a batch of sends made ready, by line (`Shards.held`)."""

    lines: dict[int, tuple[_Line, list[HostedActor]]] | None = None


class Shards:
    """The shard threads of one actor system, started with its first hosted actor."""

    def __init__(self, count: int):
        self.count = count
        self._lock = threading.Lock()
        self._lines: list[_Line] = []
        self._held = _Held()

    def schedule(self, line: _Line, actor: HostedActor) -> None:
        """Put `actor` (it has mail) in `line`; inside `held`, at its end."""
        held = self._held.lines
        if held is None:
            line.ready.put(actor)
        else:
            held.setdefault(id(line), (line, []))[1].append(actor)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Around a batch of sends on this thread: the actors it makes ready join their
        lines together at the end, one wake-up per shard (not one per first actor)."""
        if self._held.lines is not None:  # nested: the outer batch hands them over
            yield
            return
        held = self._held.lines = {}
        try:
            yield
        finally:
            self._held.lines = None
            for line, actors in held.values():
                line.ready.put_many(actors)

    def line_for(self, key: str) -> _Line:
        """The ready line of the shard that runs `key`'s turns."""
        lines = self._lines
        if not lines:
            with self._lock:
                if not self._lines:
                    self._lines = [_Line() for _ in range(self.count)]
                lines = self._lines
        return lines[shard_of(key, self.count)]

    def stop(self, timeout_s: float) -> None:
        """Stop the shard threads once the turns already in their lines have run."""
        with self._lock:
            lines, self._lines = self._lines, []
        futures = [line.ref.stop(block=False) for line in lines]
        for future in futures:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                future.get(timeout=timeout_s)
