"""Hosted actors: many durable actors of one kind served by a few shard threads.

A pykka thread per actor costs ~0.4 ms to start and ~22 KiB, and wake-ups slow down
as threads pile up (measured-facts.md). A `HostedActor` (the JobActor: one per job) is
a pykka actor built on pykka's extension points without a thread of its own:
- `_create_actor_inbox`: a `HostedInbox`, a deque behind the system lock;
- `_create_future`: pykka's `ThreadingFuture` (an `ask` waits as on any pykka actor);
- `_start_actor_loop`: no thread; the inbox is tied to one of a fixed set of shard
  threads, chosen by key. An inbox that gets mail while idle puts its actor in its
  shard's ready line (a `Coalescer`), and the shard runs the actor's turns.

Each instance still sees its messages one at a time and in order, activation costs
microseconds, and live threads stay constant however many jobs are in flight. Singletons
(the QueueActor, the WebhookActor) are `DurableActor`s, a thread each.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Self

import pykka

from genqueue.actors.coalesce import Coalescer
from genqueue.actors.records import _Call
from genqueue.actors.runtime import Durable
from genqueue.errors import StorageError

if TYPE_CHECKING:
    from pykka._actor import ActorInbox
    from pykka._envelope import Envelope


__all__ = ["HostedActor", "HostedInbox", "Shards", "shard_of"]

log = logging.getLogger("genqueue.runtime")

TURNS_PER_VISIT = 64  # then the actor goes to the back of its shard's ready line


def shard_of(key: str, shards: int) -> int:
    return zlib.crc32(key.encode()) % shards


class HostedInbox:
    """A hosted actor's inbox (pykka's `ActorInbox` protocol: `put`, `get`, `empty`).

    `put` may come from any thread; `get` only from the actor's turns (on its shard) and
    never blocks: it is called when `empty()` is false. While it holds mail, the actor
    waits in its shard's ready line exactly once (`scheduled`)."""

    __slots__ = ("actor", "envelopes", "line", "lock", "scheduled", "shards")

    def __init__(self) -> None:
        self.envelopes: collections.deque[Envelope[Any]] = collections.deque()
        self.scheduled = False
        self.lock = threading.Lock()  # for `scheduled`: the deque itself is thread-safe
        self.actor: HostedActor | None = None
        self.line: Coalescer[HostedActor] | None = None
        self.shards: Shards | None = None

    def bind(self, actor: HostedActor, shards: Shards) -> None:
        self.actor, self.shards, self.line = actor, shards, shards.line_for(actor.key)

    def put(self, envelope: Envelope[Any], /) -> None:
        assert self.shards is not None and self.line is not None and self.actor is not None
        with self.lock:
            self.envelopes.append(envelope)
            if self.scheduled:
                return
            self.scheduled = True
        self.shards.schedule(self.line, self.actor)

    def get(self) -> Envelope[Any]:
        return self.envelopes.popleft()

    def empty(self) -> bool:
        return not self.envelopes

    def settle(self) -> bool:
        """After a visit: True if mail is left (the actor goes back in line), else idle."""
        with self.lock:
            self.scheduled = bool(self.envelopes)
            return self.scheduled


class HostedActor(Durable):
    """A durable actor whose turns run on a shard thread shared with others of its kind."""

    @staticmethod
    def _create_actor_inbox() -> ActorInbox:
        return HostedInbox()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return pykka.ThreadingFuture()

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> pykka.ActorRef[Self]:
        """As pykka's `start`, but not entered in pykka's `ActorRegistry`: that is a list
        that each removal scans, and there is one hosted actor per job in flight."""
        actor = cls(*args, **kwargs)
        actor._start_actor_loop()
        return actor.actor_ref

    def _start_actor_loop(self) -> None:
        """No thread: mail puts this actor in its shard's ready line; activation
        (`on_start`) runs there before the first turn."""
        self._started = False
        self._visiting = False
        inbox: HostedInbox = self.actor_inbox  # type: ignore[assignment]
        inbox.bind(self, self.system.shards)

    def stop(self) -> None:
        """As pykka's: a stop message behind the mail already queued. From this actor's
        own turn (passivation, a crash: its inbox is empty or drained, and it is
        forgotten) it stops at once instead, without a round through its shard."""
        if self._visiting:
            self._stop()
        else:
            super().stop()

    def visit(self) -> None:
        """Run the turns waiting in the inbox (on the shard thread); as pykka's actor loop
        does for one envelope, answer an `ask`'s future, and log a failed tell."""
        stopped = self.actor_stopped.is_set
        self._visiting = True
        try:
            if not self._started:
                self._started = True
                try:
                    self.on_start()
                except Exception:  # logged by on_start; as pykka does when on_start fails
                    self.actor_stopped.set()
            inbox: HostedInbox = self.actor_inbox  # type: ignore[assignment]
            for _ in range(TURNS_PER_VISIT):
                if inbox.empty():
                    break
                envelope = inbox.get()
                if stopped():
                    self._refuse(envelope)
                else:
                    self._turn(envelope)
        finally:
            self._visiting = False
        if inbox.settle():  # mail left: back of the line, behind the shard's other actors
            assert inbox.line is not None
            inbox.line.put(self)

    def _turn(self, envelope: Envelope[Any]) -> None:
        try:
            response = self._handle_receive(envelope.message)
        except Exception:  # never let one actor's turn stop the shard and its other actors
            if envelope.reply_to is not None:
                envelope.reply_to.set_exception()
            else:
                log.exception("turn of %s/%s failed", self.kind, self.key)
            return
        if envelope.reply_to is not None:
            envelope.reply_to.set(response)

    def _refuse(self, envelope: Envelope[Any]) -> None:
        """Mail for an instance that failed to start or stopped. A pykka ask (a stop) gets
        ActorDeadError, as from pykka's own loop; one of our asks gets the error (its
        caller must not wait forever); a tell is dropped, as one to a crashed thread
        actor is."""
        message = envelope.message
        if envelope.reply_to is not None:
            dead = pykka.ActorDeadError(f"{self.kind}/{self.key} stopped before handling it")
            envelope.reply_to.set_exception((type(dead), dead, None))
        elif isinstance(message, _Call):
            failure = self.system.store.failure
            error: Exception = (
                StorageError(f"state store failed: {failure}")
                if failure is not None
                else pykka.ActorDeadError(f"{self.kind}/{self.key} is unavailable")
            )
            message.reply(False, error)
        else:
            log.warning("message to %s/%s dropped: the instance stopped", self.kind, self.key)


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
    """A shard's ready line: actors with mail; the first one in a batch wakes the shard."""

    def __init__(self) -> None:
        self.ready: Coalescer[HostedActor] = Coalescer(self._wake)
        self.ref = _Shard.start(self.ready)

    def _wake(self) -> None:
        self.ref.tell(None)


class _Held(threading.local):
    """Per thread: the actors a batch of sends made ready, by line (`Shards.held`)."""

    lines: dict[int, tuple[Coalescer[HostedActor], list[HostedActor]]] | None = None


class Shards:
    """The shard threads of one actor system, started with its first hosted actor."""

    def __init__(self, count: int):
        self.count = count
        self._lock = threading.Lock()
        self._lines: list[_Line] = []
        self._held = _Held()

    def schedule(self, line: Coalescer[HostedActor], actor: HostedActor) -> None:
        """Put `actor` (it has mail) in `line`; inside `held`, at its end."""
        held = self._held.lines
        if held is None:
            line.put(actor)
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
                line.put_many(actors)

    def line_for(self, key: str) -> Coalescer[HostedActor]:
        """The ready line of the shard that runs `key`'s turns."""
        lines = self._lines
        if not lines:
            with self._lock:
                if not self._lines:
                    self._lines = [_Line() for _ in range(self.count)]
                lines = self._lines
        return lines[shard_of(key, self.count)].ready

    def stop(self, timeout_s: float) -> None:
        """Stop the shard threads once the turns already in their lines have run."""
        with self._lock:
            lines, self._lines = self._lines, []
        futures = [line.ref.stop(block=False) for line in lines]
        for future in futures:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                future.get(timeout=timeout_s)
