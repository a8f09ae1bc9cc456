"""The id alphabets, written once: a job id, a user id (and a path segment), a webhook
delivery id and a dead letter's cursor. Each `*_PATTERN` is anchored for JSON Schema (the
OpenAPI document and msgspec's `Meta(pattern=...)`); each compiled twin takes `fullmatch`.

Python's `$` also matches before a final newline, where ECMA-262's (JSON Schema's) does
not, and msgspec runs a pattern with `re.search`: `END` closes that gap, so `"a\\n"` is
refused by both readings.
"""

from __future__ import annotations

import os
import re
import threading
import time

__all__ = [
    "DEAD_CURSOR",
    "DEAD_CURSOR_PATTERN",
    "DELIVERY_ID",
    "DELIVERY_ID_PATTERN",
    "END",
    "ID_CHARS",
    "JOB_ID",
    "JOB_ID_PATTERN",
    "MAX_ID_CHARS",
    "NAME_PATTERN",
    "new_id",
]

END = r"$(?!\n)"
MAX_ID_CHARS = 128
# Job ids (a client may choose one; not made only of dots: "." and ".." are path segments,
# not names), user ids and path segments.
ID_CHARS = r"[A-Za-z0-9._:\-]"
JOB_ID_PATTERN = rf"^(?!\.+{END}){ID_CHARS}{{1,{MAX_ID_CHARS}}}{END}"
JOB_ID = re.compile(JOB_ID_PATTERN)
# User ids and path segments may not start with '.' (they become folder names); unanchored.
NAME_PATTERN = rf"[A-Za-z0-9_:\-]{ID_CHARS}{{0,{MAX_ID_CHARS - 1}}}"
# A webhook delivery's id (its `webhook-id`, `msg_...`).
DELIVERY_ID_PATTERN = rf"^[A-Za-z0-9_\-]{{1,{MAX_ID_CHARS}}}{END}"
DELIVERY_ID = re.compile(DELIVERY_ID_PATTERN)
# A page of dead letters continues after this key: the job id, '/', a 7-digit sequence.
DEAD_CURSOR_PATTERN = rf"^{ID_CHARS}{{1,{MAX_ID_CHARS}}}/[0-9]{{7}}{END}"
DEAD_CURSOR = re.compile(DEAD_CURSOR_PATTERN)


_IDS_PER_DRAW = 256
_draws = threading.local()


def _forget_draws() -> None:  # a forked child must not hand out its parent's next ids
    global _draws
    _draws = threading.local()


os.register_at_fork(after_in_child=_forget_draws)

# a hex digit's low two bits under the variant's "10"
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def new_id() -> str:
    """A new id: a UUIDv7 (RFC 9562) as 32 hex digits: the Unix time in milliseconds, then 74
    bits from the OS's CSPRNG. Ids made in a later millisecond sort later, so new jobs land at
    the end of the store's key index, not on a random page of it: a commit writes a few pages,
    not one per job (in a drain, the write-ahead log took 9.1 KB a job with random ids, 5.2 KB
    with these).

    The random bits are drawn 256 ids at a time, per thread: `os.urandom` releases the GIL,
    and on the event loop, with the actors' threads busy, taking it back cost ~20 us an id."""
    pool: list[str] | None = getattr(_draws, "pool", None)
    if not pool:
        raw = os.urandom(10 * _IDS_PER_DRAW).hex()
        pool = _draws.pool = [raw[i : i + 20] for i in range(0, len(raw), 20)]
    bits = pool.pop()
    # version 7 in the 13th digit, the variant (binary 10) in the top of the 17th
    return f"{time.time_ns() // 1_000_000:012x}7{bits[:3]}{_VARIANT[bits[3]]}{bits[4:19]}"
