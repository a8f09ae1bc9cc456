"""The waiting line: higher priority first; within a priority, round robin between users.

One user's backlog must not starve the others (Amazon SQS's fair queues and BullMQ's
groups do the same). Each priority keeps every user's waiting jobs in FIFO order (by
submission sequence) and a turn pointer: the user served last at that priority. The
next job at a priority is the oldest job of the first user after the pointer, in user-id
order, wrapping around, whom the per-user cap allows. So while a user has a job waiting
(and is below its cap), each other user gets at most one dispatch at that priority
before it: the pointer would have to pass it to serve anyone twice.

The order is a pure function of the waiting entries (stored) and the pointers (stored in
the queue's meta with every dispatch), so a restart dispatches in exactly the order the
crashed process would have.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from genqueue.errors import QueueFull

__all__ = ["FairLine", "Waiting", "check_room"]


class Waiting(Protocol):
    """What the line needs of an entry (the queue's `Pending`)."""

    @property
    def user_id(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def enqueued_at(self) -> float: ...


E = TypeVar("E", bound=Waiting)


class _Depths:
    """For each depth j, how many users have at least j jobs waiting (`at(j)`), and the sum
    over j <= c (`upto(c)`, which is the sum over users of min(their jobs, c)).

    The sums come from a Fenwick tree, built only when first asked for (a line of one
    user never needs it) and kept up to date from then on."""

    __slots__ = ("_at", "_tree")

    def __init__(self) -> None:
        self._at: list[int] = [0]  # index 0 unused
        self._tree: list[int] | None = None

    def at(self, j: int) -> int:
        return self._at[j] if j < len(self._at) else 0

    def change(self, j: int, delta: int) -> None:
        if j >= len(self._at):
            self._at.extend([0] * max(j + 1 - len(self._at), len(self._at)))
            self._tree = None  # rebuilt at its next use, at the new size
        self._at[j] += delta
        tree = self._tree
        if tree is not None:
            n = len(tree)
            while j < n:
                tree[j] += delta
                j += j & -j

    def upto(self, c: int) -> int:
        tree = self._tree
        if tree is None:
            tree = self._tree = self._build()
        j, total = min(c, len(tree) - 1), 0
        while j > 0:
            total += tree[j]
            j -= j & -j
        return total

    def _build(self) -> list[int]:
        tree = self._at[:]
        n = len(tree)
        for i in range(1, n):
            parent = i + (i & -i)
            if parent < n:
                tree[parent] += tree[i]
        return tree


class _Lane(Generic[E]):
    """One priority: each user's FIFO, the users with work in id order, the count, and
    how many users have at least j jobs waiting (for positions)."""

    __slots__ = ("by_user", "count", "depths", "users")

    def __init__(self) -> None:
        self.by_user: dict[str, deque[E]] = {}
        self.users: list[str] = []  # sorted: the round robin's order
        self.count = 0
        self.depths = _Depths()

    def add(self, entry: E) -> None:
        q = self.by_user.get(entry.user_id)
        if q is None:
            q = self.by_user[entry.user_id] = deque((entry,))
            bisect.insort(self.users, entry.user_id)
        elif q[-1].seq > entry.seq:  # a retried job goes back to its own place
            items = sorted([*q, entry], key=lambda e: e.seq)
            q.clear()
            q.extend(items)
        else:
            q.append(entry)
        self.count += 1
        self.depths.change(len(q), 1)

    def remove(self, entry: E) -> None:
        q = self.by_user[entry.user_id]
        self.depths.change(len(q), -1)
        if q[0] is entry:
            q.popleft()
        else:
            q.remove(entry)
        self.count -= 1
        if not q:
            del self.by_user[entry.user_id]
            del self.users[bisect.bisect_left(self.users, entry.user_id)]

    def first_after(self, last: str | None) -> int:
        """The index in `users` of the first user after `last` (wrapping around)."""
        if last is None:
            return 0
        start = bisect.bisect_right(self.users, last)
        return start if start < len(self.users) else 0

    def after(self, last: str | None) -> Iterator[str]:
        """The users in turn order: after `last`, wrapping around."""
        users, n = self.users, len(self.users)
        start = self.first_after(last)
        for i in range(n):
            yield users[(start + i) % n]


class FairLine(Generic[E]):
    """Waiting entries in dispatch order (see the module docstring)."""

    def __init__(self, turns: dict[str, str] | None = None):
        self._lanes: dict[int, _Lane[E]] = {}
        # priority (as a string: it is stored in JSON-like meta) -> the user served last
        self.turns: dict[str, str] = turns if turns is not None else {}
        self._per_user: dict[str, int] = {}
        self._total = 0

    def __len__(self) -> int:
        return self._total

    def __iter__(self) -> Iterator[E]:
        """Every waiting entry, by priority lane and user (not in dispatch order)."""
        for lane in self._lanes.values():
            for entries in lane.by_user.values():
                yield from entries

    def of_user(self, user_id: str) -> int:
        """How many jobs of this user wait (all priorities)."""
        return self._per_user.get(user_id, 0)

    def add(self, entry: E) -> None:
        lane = self._lanes.get(entry.priority)
        if lane is None:
            lane = self._lanes[entry.priority] = _Lane()
        lane.add(entry)
        self._per_user[entry.user_id] = self._per_user.get(entry.user_id, 0) + 1
        self._total += 1

    def find(self, priority: int, seq: int, user_id: str | None = None) -> E | None:
        lane = self._lanes.get(priority)
        if lane is None:
            return None
        queues = [lane.by_user.get(user_id, ())] if user_id is not None else lane.by_user.values()
        for q in queues:
            for e in reversed(q):  # newest first: a job just added is found at once
                if e.seq == seq:
                    return e
        return None

    def remove(self, entry: E) -> None:
        lane = self._lanes[entry.priority]
        lane.remove(entry)
        if not lane.count:
            del self._lanes[entry.priority]
        left = self._per_user[entry.user_id] - 1
        if left:
            self._per_user[entry.user_id] = left
        else:
            del self._per_user[entry.user_id]
        self._total -= 1

    def next(
        self, blocked: Callable[[str], bool] | None = None, ok: Callable[[E], bool] | None = None
    ) -> E | None:
        """The entry to dispatch next (left in the line), skipping users `blocked` says are
        at their cap and, with `ok`, entries it refuses (a closed provider's jobs: then a
        user's first job that may start, which scans that user's waiting jobs); None when
        nothing may start."""
        for priority in sorted(self._lanes, reverse=True):
            lane = self._lanes[priority]
            last = self.turns.get(str(priority))
            if blocked is None and ok is None:  # the next user's turn, at once
                return lane.by_user[lane.users[lane.first_after(last)]][0]
            for user in lane.after(last):
                if blocked is not None and blocked(user):
                    continue
                if ok is None:
                    return lane.by_user[user][0]
                entry = next((e for e in lane.by_user[user] if ok(e)), None)
                if entry is not None:
                    return entry
        return None

    def served(self, entry: E) -> None:
        """`entry` was dispatched: take it off the line and pass the turn on."""
        self.remove(entry)
        self.turns[str(entry.priority)] = entry.user_id

    def position(self, entry: E) -> int:
        """Where `entry` stands (1 = next) if nothing else arrives and no cap holds anyone:
        every job of a higher priority, then the round robin at its own. Exact for a
        user's first waiting job at a priority; for its k-th (k > 1), the users with k jobs
        or more are all counted as served before it in the k-th round, so at most this
        many jobs start before it. O(log n): no walk over the users."""
        ahead = sum(lane.count for p, lane in self._lanes.items() if p > entry.priority)
        lane = self._lanes[entry.priority]
        mine = lane.by_user[entry.user_id]
        # its place in its user's FIFO; usually just added, so the last
        k = len(mine) if mine[-1] is entry else 1 + sum(1 for e in mine if e.seq < entry.seq)
        users = lane.users
        if len(users) == 1:
            return ahead + k
        if k == 1:  # the users before its own in this round, from the turn on
            last = self.turns.get(str(entry.priority))
            start = lane.first_after(last)
            at = bisect.bisect_left(users, entry.user_id)
            return ahead + (at - start if at >= start else len(users) - start + at) + 1
        # rounds 1..k-1: each user's jobs up to k-1 (its own included); round k: the others
        # with k jobs or more
        return ahead + lane.depths.upto(k - 1) + lane.depths.at(k) - 1 + 1

    def by_priority(self) -> dict[str, int]:
        return {str(p): self._lanes[p].count for p in sorted(self._lanes, reverse=True)}

    def oldest_enqueued_at(self) -> float | None:
        return min(
            (q[0].enqueued_at for lane in self._lanes.values() for q in lane.by_user.values()),
            default=None,
        )


def check_room(line: FairLine[Any], user_id: str, total: int, per_user: int) -> None:
    """QueueFull if one more waiting job would pass the queue's cap (`total`, 0: none) or
    its user's (`per_user`)."""
    if total and len(line) >= total:
        raise QueueFull(f"the queue holds {total} waiting jobs, its limit", limit=total)
    if per_user and line.of_user(user_id) >= per_user:
        raise QueueFull(
            f"user {user_id} has {per_user} waiting jobs, the limit per user",
            limit=per_user,
            user=True,
        )
