"""The fair line on its own: its order and its positions against a brute-force replay."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from genqueue.actors.fairline import FairLine


@dataclass(frozen=True)
class Entry:
    user_id: str
    priority: int
    seq: int
    enqueued_at: float = 0.0


def replay(line: FairLine[Entry]) -> list[Entry]:
    """Every waiting entry in the order the line would dispatch them (it is emptied)."""
    order = []
    while (entry := line.next()) is not None:
        line.served(entry)
        order.append(entry)
    return order


OPS = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 2), st.booleans()),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_order_is_priority_then_round_robin_and_positions_bound_it(
    ops: list[tuple[str, int, bool]],
) -> None:
    """Each op adds an entry (and, if asked, dispatches one first); at every add, the new
    entry's position is exact for a user's first entry at its priority and an upper bound
    (by at most the other users) for a later one."""
    line: FairLine[Entry] = FairLine()
    mirror: FairLine[Entry] = FairLine()
    for seq, (user, priority, dispatch) in enumerate(ops):
        if dispatch and (head := line.next()) is not None:
            line.served(head)
            mirror.served(head)
        entry = Entry(user, priority, seq)
        line.add(entry)
        mirror.add(entry)
        position = line.position(entry)
        copy: FairLine[Entry] = FairLine(dict(mirror.turns))
        for e in sorted(_entries(mirror), key=lambda e: e.seq):
            copy.add(e)
        exact = replay(copy).index(entry) + 1
        first = sum(1 for e in _entries(line) if (e.user_id, e.priority) == (user, priority))
        if first == 1:
            assert position == exact
        else:
            assert exact <= position <= exact + 3
    order = replay(line)
    assert [e.priority for e in order] == sorted((e.priority for e in order), reverse=True)
    for p in {e.priority for e in order}:  # no user starts twice while another waits
        here = [e.user_id for e in order if e.priority == p]
        for i in range(len(here) - 1):
            if here[i] == here[i + 1]:
                assert set(here[i + 1 :]) == {here[i]}, here


def _entries(line: FairLine[Entry]) -> list[Entry]:
    return list(line)
