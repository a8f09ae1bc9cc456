"""A namespace of the state store: one table, `get / put / delete / list(prefix)` on
msgspec-encoded values, with an optional in-memory cache of its recent writes."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, TypeVar

from genqueue.storage.codec import decoder, encode
from genqueue.storage.tables import key_range

if TYPE_CHECKING:
    from genqueue.storage.state import StateStore

__all__ = ["Namespace", "WriteCache"]

T = TypeVar("T")


class WriteCache:
    """The latest encoded value (None: deleted) of recently written keys, bounded LRU.

    Written only by the state store under its lock (one writer at a time); read from any
    thread with one `dict.get`, which the GIL makes atomic against those writes."""

    def __init__(self, size: int):
        self._size = size
        self._values: OrderedDict[str, bytes | None] = OrderedDict()

    def put(self, key: str, value: bytes | None) -> None:
        self.put_many({key: value})

    def put_many(self, writes: dict[str, bytes | None]) -> None:
        values = self._values
        for key, value in writes.items():
            values[key] = value
            values.move_to_end(key)
        while len(values) > self._size:
            values.popitem(last=False)

    def get(self, key: str) -> tuple[bool, bytes | None]:
        value = self._values.get(key, _ABSENT)
        if value is _ABSENT:
            return False, None
        return True, value  # type: ignore[return-value]


_ABSENT = object()


class Namespace:
    """One table: `get / put / delete / list(prefix)` on msgspec-encoded values."""

    def __init__(self, store: StateStore, name: str):
        self.store = store
        self.name = name
        self.cache: WriteCache | None = None
        self._get_sql = f'SELECT value FROM "{name}" WHERE key = ?'
        self._list_sql = f'SELECT key, value FROM "{name}" WHERE key >= ? AND key < ? ORDER BY key'

    def get(self, key: str, type: type[T] | Any = Any) -> T | None:
        found, value = self.store._buffered(self.name, key)
        if not found and self.cache is not None:
            found, value = self.cache.get(key)
        if not found:
            found, value = self.store._pending_value(self.name, key)
        if found:
            return None if value is None else decoder(type).decode(value)
        rows = self.store._select(self._get_sql, (key,))
        return decoder(type).decode(rows[0][0]) if rows else None

    def put(self, key: str, value: Any) -> int:
        """Queue the write; returns its sequence number for the output gate."""
        return self.store._write(self.name, key, encode(value))

    def delete(self, key: str) -> int:
        return self.store._write(self.name, key, None)

    def list(
        self,
        prefix: str = "",
        type: Any = Any,
        *,
        start: str | None = None,
        end: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Any]]:
        """Entries whose key starts with `prefix` (and lies in [start, end)), in key order."""
        lo, hi = key_range(prefix, start, end)
        sql = self._list_sql + (f" LIMIT {int(limit)}" if limit is not None else "")
        dec = decoder(type)
        return [(k, dec.decode(v)) for k, v in self.store._select(sql, (lo, hi), drain=True)]
