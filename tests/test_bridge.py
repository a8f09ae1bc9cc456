"""The asyncio bridge's posts: run on their loop, in order; a collected loop's inbox goes."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import weakref

from genqueue.actors.bridge import LoopThread, post


def test_posts_from_threads_run_on_the_loop_in_order() -> None:
    io = LoopThread("test-bridge")
    loop = io.start()
    seen: list[tuple[int, bool]] = []
    done = threading.Event()

    def record(i: int) -> None:
        seen.append((i, threading.current_thread().name == "test-bridge"))
        if i == 999:
            done.set()

    try:
        for i in range(1000):
            post(loop, record, i)
        assert done.wait(10)
    finally:
        io.stop()
    assert seen == [(i, True) for i in range(1000)]


def test_posting_to_a_loop_does_not_keep_it_alive() -> None:
    def use_a_loop() -> weakref.ref[asyncio.AbstractEventLoop]:
        loop = asyncio.new_event_loop()
        ran: list[int] = []
        post(loop, ran.append, 1)
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        assert ran == [1]
        return weakref.ref(loop)

    loops = [use_a_loop() for _ in range(20)]
    gc.collect()
    assert [ref() for ref in loops] == [None] * 20


CHILD = r"""
import asyncio, gc, sys
from genqueue.actors import bridge
m = int(sys.argv[1])
def noop(): pass
new = asyncio.new_event_loop()
gc.collect()
gc.disable()
old = asyncio.new_event_loop()
bridge.post(old, noop)  # an inbox, and a finalizer for `old`
old.close(); old.cycle = old; del old  # cyclic garbage, still in generation 0
gc.set_threshold(gc.get_count()[0] + m)
gc.enable()
bridge.post(new, noop)  # a collection lands on the m-th allocation of this post
print("ok", flush=True)
"""


def test_a_loop_collected_while_another_loops_inbox_is_made_does_not_hang() -> None:
    """The finalizer that forgets a collected loop's inbox runs wherever the collector runs,
    inside `post` too (which holds the registry's lock while it allocates): it takes no lock.
    Each child places a collection at one allocation of that `post` (found by the review)."""
    for m in range(12):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(m)], capture_output=True, text=True, timeout=20
        )
        assert out.stdout.strip() == "ok", (m, out.stderr[-2000:])
