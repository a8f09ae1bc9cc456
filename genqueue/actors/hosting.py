"""Hosted actors: many durable actors of one kind served by a few shard threads.

A pykka thread per actor costs ~0.4 ms to start and ~22 KiB, and wake-ups slow down
as threads pile up (measured-facts.md). Actors of a `hosted` kind (the JobActor: one
per job) are plain objects whose turns run on one of a fixed set of shard threads,
chosen by key: each instance still sees its messages one at a time and in order,
activation costs microseconds, and live threads stay constant however many jobs are
in flight. Singletons (the QueueActor, the WebhookActor) keep a thread of their own.
"""

from __future__ import annotations

import logging
import zlib
from typing import TYPE_CHECKING, Any

import msgspec
import pykka

if TYPE_CHECKING:
    from genqueue.actors.runtime import DurableActor
    from genqueue.actors.system import ActorSystem

__all__ = ["Envelope", "Envelopes", "HostedRef", "Shard", "shard_of"]

log = logging.getLogger("genqueue.runtime")


class Envelope(msgspec.Struct, frozen=True):
    actor: Any  # DurableActor
    message: Any


class Envelopes(msgspec.Struct, frozen=True):
    """Several envelopes in one hand-off (`ActorSystem.tell_many`), handled in order."""

    items: list[Envelope]


def shard_of(key: str, shards: int) -> int:
    return zlib.crc32(key.encode()) % shards


class Shard(pykka.ThreadingActor):
    """One thread running the turns of the hosted actors whose keys hash to it."""

    def __init__(self, system: ActorSystem):
        super().__init__()
        self.system = system

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Envelope):
            self._turn(message)
        elif isinstance(message, Envelopes):
            for envelope in message.items:
                self._turn(envelope)
        return None

    def _turn(self, envelope: Envelope) -> None:
        actor = envelope.actor
        with self.system.lock:
            actor.hosted_pending -= 1
        try:
            if not actor.hosted_started:  # activation runs before the first message's turn
                actor.hosted_start()
            if actor.hosted_alive:
                actor.on_receive(envelope.message)
            else:
                actor.refuse(envelope.message)
        except Exception:  # never let one actor's turn stop the shard and its other actors
            log.exception("turn of %s/%s failed", actor.kind, actor.key)


class HostedRef:
    """What `ActorSystem.get` returns for a hosted actor: `tell` goes through its shard."""

    def __init__(self, shard: pykka.ActorRef[Shard], actor: DurableActor):
        self.shard = shard
        self.actor = actor
        self.actor_urn = actor.actor_urn

    def tell(self, message: Any) -> None:
        """Called with the system lock held (ActorSystem.tell_internal)."""
        self.actor.hosted_pending += 1
        self.shard.tell(Envelope(self.actor, message))

    def is_alive(self) -> bool:
        return bool(self.actor.hosted_alive)

    def stop(self, block: bool = True, timeout: float | None = None) -> None:
        self.actor.hosted_alive = False
