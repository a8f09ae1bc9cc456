"""What the actor runtime stores and passes: alarm records, its internal messages
(immutable: pykka does not copy messages), an actor's view of its storage, the alarm table."""

from __future__ import annotations

import threading
from typing import Any

import msgspec

from genqueue.storage.state import Namespace

__all__ = ["ActorStorage", "AlarmInfo", "AlarmRecord", "AlarmTable"]


class AlarmInfo(msgspec.Struct, frozen=True):
    """What `alarm()` is told: how many times this alarm has already failed."""

    retry_count: int = 0

    @property
    def is_retry(self) -> bool:
        return self.retry_count > 0


class AlarmRecord(msgspec.Struct, frozen=True):
    """A persisted alarm: when, and how many retries so far."""

    at: float
    retry_count: int = 0


# -- internal messages (immutable: pykka does not copy messages) --------------------------


class _Call(msgspec.Struct, frozen=True):
    body: Any
    reply: Any  # Reply | None


class _AlarmFire(msgspec.Struct, frozen=True):
    at: float


class _TaskDone(msgspec.Struct, frozen=True):
    token: int
    on_done: Any  # Callable[[Outcome], None]
    outcome: Any  # Outcome


class _Batch(msgspec.Struct, frozen=True):
    """Several tells to one actor, handled in one turn (`ActorSystem.tell_many`)."""

    messages: list[Any]


class _Passivate(msgspec.Struct, frozen=True):
    idle_before: float | None = None  # None: passivate now if nothing else is queued


class ActorStorage:
    """An actor's own keys in its kind's table; remembers its last write for the gate."""

    def __init__(self, ns: Namespace, key: str):
        self._ns = ns
        self._prefix = key + "/"
        self.last_seq = 0

    def get(self, key: str, type: Any = Any) -> Any:
        return self._ns.get(self._prefix + key, type)

    def put(self, key: str, value: Any) -> None:
        self.last_seq = max(self.last_seq, self._ns.put(self._prefix + key, value))

    def delete(self, key: str) -> None:
        self.last_seq = max(self.last_seq, self._ns.delete(self._prefix + key))

    def list(self, prefix: str = "", type: Any = Any, **kw: Any) -> list[tuple[str, Any]]:
        n = len(self._prefix)
        for bound in ("start", "end"):
            if kw.get(bound) is not None:
                kw[bound] = self._prefix + kw[bound]
        return [(k[n:], v) for k, v in self._ns.list(self._prefix + prefix, type, **kw)]


class AlarmTable:
    """The stored alarms with an in-memory mirror: activation reads no disk for them."""

    def __init__(self, ns: Namespace):
        self._ns = ns
        self._mirror: dict[str, AlarmRecord] = {}
        self._lock = threading.Lock()

    def load(self) -> list[tuple[str, AlarmRecord]]:
        rows = self._ns.list("", AlarmRecord)
        with self._lock:
            self._mirror = dict(rows)
        return rows

    def get(self, address: str, type: Any = AlarmRecord) -> AlarmRecord | None:
        with self._lock:
            return self._mirror.get(address)

    def put(self, address: str, record: AlarmRecord) -> int:
        with self._lock:
            self._mirror[address] = record
            return self._ns.put(address, record)

    def delete(self, address: str) -> int:
        with self._lock:
            self._mirror.pop(address, None)
            return self._ns.delete(address)
