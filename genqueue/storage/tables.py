"""The SQL of the state store: a table per namespace and the statements that write it.

Each namespace is its own table, `key TEXT PRIMARY KEY, value BLOB` (sqlitedict's
schema), so a prefix listing is a range scan of the primary-key index: it costs what it
returns, not the size of the table. Queued writes are coalesced before they are sent:
the last write of each key wins, which is the state applying them one by one would reach,
so a group of turns costs one multi-row REPLACE and one DELETE per table.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["Statement", "Writes", "check_name", "create_sql", "key_range", "write_statements"]

Writes = dict[str, dict[str, bytes | None]]
"""Writes not yet sent: table -> key -> value (None: deleted)."""
Statement = tuple[str, list[Any]]

_ROWS = 400  # rows per statement (SQLite allows 32,766 variables)
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def check_name(name: str) -> None:
    """Raise ValueError unless `name` can be a namespace (an identifier, up to 64 chars)."""
    if not _TABLE_NAME.match(name):
        raise ValueError(f"namespace name {name!r} must be an identifier")


def create_sql(name: str) -> str:
    return f'CREATE TABLE IF NOT EXISTS "{name}" (key TEXT PRIMARY KEY, value BLOB)'


def key_range(prefix: str, start: str | None, end: str | None) -> tuple[str, str]:
    """[lo, hi): the keys starting with `prefix` that lie in [start, end)."""
    lo = max(prefix, start) if start is not None else prefix
    hi = _prefix_end(prefix) if prefix else "\U0010ffff"
    if end is not None:
        hi = min(hi, end)
    return lo, hi


def _prefix_end(prefix: str) -> str:
    """The smallest string greater than every string starting with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def write_statements(pending: Writes) -> list[Statement]:
    """The statements that apply `pending`: multi-row REPLACEs, then DELETEs, per table."""
    statements: list[Statement] = []
    puts: dict[str, list[Any]] = {}
    dels: dict[str, list[str]] = {}
    for table, writes in pending.items():
        for key, value in writes.items():
            if value is None:
                dels.setdefault(table, []).append(key)
            else:
                puts.setdefault(table, []).extend((key, value))
    for table, flat in puts.items():
        for i in range(0, len(flat), 2 * _ROWS):
            part = flat[i : i + 2 * _ROWS]
            rows = ",".join(["(?,?)"] * (len(part) // 2))
            statements.append((f'REPLACE INTO "{table}" (key, value) VALUES {rows}', part))
    for table, keys in dels.items():
        for i in range(0, len(keys), _ROWS):
            part = keys[i : i + _ROWS]
            marks = ",".join(["?"] * len(part))
            statements.append((f'DELETE FROM "{table}" WHERE key IN ({marks})', part))
    return statements
