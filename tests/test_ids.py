"""Server-chosen ids: UUIDv7s as 32 hex digits, in time order, never repeated across threads
or a fork."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

from genqueue.ids import JOB_ID, new_id


def test_ids_are_32_hex_digits_and_valid_job_ids() -> None:
    ids = [new_id() for _ in range(1000)]
    for job_id in ids:
        assert len(job_id) == 32
        int(job_id, 16)
        assert JOB_ID.fullmatch(job_id)
    assert len(set(ids)) == len(ids)


def test_ids_are_uuid7s_that_sort_by_the_time_they_were_made() -> None:
    before_ms = time.time_ns() // 1_000_000
    first = [new_id() for _ in range(300)]
    after_ms = time.time_ns() // 1_000_000
    for job_id in first:
        u = uuid.UUID(job_id)
        assert (u.version, u.variant) == (7, uuid.RFC_4122)
        assert before_ms <= int(job_id[:12], 16) <= after_ms
    # the time leads, in fixed width: ids of different milliseconds sort by their time
    spread = []
    for _ in range(3):
        time.sleep(0.002)
        spread.append(new_id())
    made = [first[0], first[-1], *spread]
    assert len({i[:12] for i in made}) >= 3
    for a in made:
        for b in made:
            if a[:12] != b[:12]:
                assert (a < b) == (int(a[:12], 16) < int(b[:12], 16))
    # the 74 bits after the time are random: ids made in one millisecond still differ
    assert len({job_id[12:] for job_id in first}) == len(first)


def test_no_id_repeats_across_threads() -> None:
    seen: list[list[str]] = []

    def draw() -> None:
        seen.append([new_id() for _ in range(2000)])

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for batch in seen for i in batch]
    assert len(set(ids)) == len(ids) == 8000
    # the random parts too: ids made in different milliseconds differ by their time alone
    assert len({i[12:] for i in ids}) == 8000


CHILD = """
import os
from genqueue.ids import new_id

new_id()  # this process now holds a pool of drawn ids
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # the child: its next ids, to the parent
    os.close(read)
    os.write(write, "".join(new_id() for _ in range(10)).encode())
    os._exit(0)
os.close(write)
with os.fdopen(read, "rb") as pipe:
    child = pipe.read().decode()
os.waitpid(pid, 0)
# the random parts: a child reusing its parent's pool would still differ in the time
child_ids = {child[i + 12 : i + 32] for i in range(0, len(child), 32)}
parent_ids = {new_id()[12:] for _ in range(10)}
print(len(child_ids), len(child_ids & parent_ids))
"""


def test_a_forked_child_draws_its_own_ids() -> None:
    # in a process of one thread (a fork from pytest's, which has several, warns)
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["10", "0"]
