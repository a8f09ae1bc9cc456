"""The events consumer's order rule, in process: within one job (one FIFO group) the first
message not applied holds back the rest, which come back after it, in order."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from genqueue.cluster.consumer import EventsConsumer
from genqueue.cluster.transport import Received


class StubQueues:
    def __init__(self) -> None:
        self.visibility: list[tuple[str, int]] = []

    async def set_visibility(self, queue: str, handle: str, visibility_s: int) -> None:
        self.visibility.append((handle, visibility_s))


def _consumer() -> tuple[EventsConsumer, StubQueues]:
    queues = StubQueues()
    coordinator: Any = SimpleNamespace(queues=queues, read_job=None)
    queue: Any = SimpleNamespace(subscribe=lambda callback: lambda: None)
    return EventsConsumer(coordinator, queue), queues


def _msgs(*bodies: str) -> list[Received]:
    return [Received(b, f"h-{b}", 1, "job-1") for b in bodies]


def test_the_first_event_not_applied_holds_back_the_rest_of_its_job() -> None:
    applied: list[str] = []

    async def apply(m: Received) -> bool:
        applied.append(m.body)
        return m.body != "checkpoint"  # not applicable yet (the job is still recovering)

    async def main() -> StubQueues:
        consumer, queues = _consumer()
        await consumer._apply_group("events", _msgs("progress", "checkpoint", "outcome"), apply)
        return queues

    queues = asyncio.run(main())
    assert applied == ["progress", "checkpoint"]  # the outcome is not applied before it
    assert queues.visibility == [("h-checkpoint", 1), ("h-outcome", 1)]


def test_an_event_that_raises_is_put_back_with_the_rest() -> None:
    async def apply(m: Received) -> bool:
        if m.body == "b":
            raise RuntimeError("store busy")
        return True

    async def main() -> StubQueues:
        consumer, queues = _consumer()
        await consumer._apply_group("events", _msgs("a", "b", "c"), apply)
        return queues

    assert asyncio.run(main()).visibility == [("h-b", 1), ("h-c", 1)]
