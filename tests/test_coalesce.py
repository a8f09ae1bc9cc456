"""The one hand-off: a wake-up per batch, the whole batch to the drain, nothing kept when
the wake-up cannot happen."""

from __future__ import annotations

import threading

import pytest

from genqueue.actors.coalesce import Coalescer


def test_one_wake_per_batch_and_the_drain_takes_it_all() -> None:
    wakes: list[int] = []
    handoff: Coalescer[int] = Coalescer(lambda: wakes.append(1))
    handoff.put(1)
    handoff.put(2)
    handoff.put_many([3, 4])
    assert len(wakes) == 1
    assert handoff.take() == [1, 2, 3, 4]
    handoff.put_many([])
    assert len(wakes) == 1  # nothing handed over: nobody woken
    handoff.put(5)
    assert len(wakes) == 2 and handoff.take() == [5]


def test_many_threads_lose_nothing_and_wake_once_per_batch() -> None:
    wakes = 0
    taken: list[int] = []
    lock = threading.Lock()

    def wake() -> None:
        nonlocal wakes
        with lock:
            wakes += 1

    handoff: Coalescer[int] = Coalescer(wake)

    def producer(base: int) -> None:
        for i in range(1000):
            handoff.put(base + i)
            if i % 100 == 0:
                taken.extend(handoff.take())

    threads = [threading.Thread(target=producer, args=(n * 1000,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    taken.extend(handoff.take())
    assert sorted(taken) == list(range(4000))
    assert 1 <= wakes <= 4000


def test_a_failed_wake_drops_the_batch_and_the_next_put_wakes_again() -> None:
    calls: list[str] = []

    def wake() -> None:
        calls.append("wake")
        if len(calls) == 1:
            raise RuntimeError("the loop is closed")

    handoff: Coalescer[str] = Coalescer(wake)
    with pytest.raises(RuntimeError):
        handoff.put("lost")
    assert handoff.take() == []
    handoff.put("next")
    assert calls == ["wake", "wake"] and handoff.take() == ["next"]
