"""sqs mode's 429 notices: only a start's 429 is told (a poll's is retried, as on one
machine), and the coordinator pauses dispatch from when the worker saw it; a notice applied
twice or late (its pause over) changes nothing, so it never becomes an hour's quota pause."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers_queue import Recorder, queue_factory

from genqueue.clock import ManualClock
from genqueue.cluster.consumer import EventsConsumer
from genqueue.cluster.messages import RateLimited, encode
from genqueue.cluster.starts import ClientSpy
from genqueue.cluster.transport import Received
from genqueue.errors import ProviderError

T0 = 1_000_000.0


def _limited() -> ProviderError:
    return ProviderError("rate limited", retryable=True, status=429, retry_after_s=7.0)


class LimitedClient:
    async def start(self, *args: Any, **kw: Any) -> str:
        raise _limited()

    async def poll(self, *args: Any, **kw: Any) -> str:
        raise _limited()


class Watcher:
    def __init__(self) -> None:
        self.told: list[tuple[float | None, str]] = []

    def start_settled(self, run: Any) -> None:
        pass

    def saw_429(self, retry_after_s: float | None, provider: str = "veo3") -> None:
        self.told.append((retry_after_s, provider))

    def refuse_start(self, run: Any) -> bool:
        return False


def test_only_a_starts_429_is_told_to_the_coordinator() -> None:
    watcher = Watcher()
    spy = ClientSpy(LimitedClient(), watcher, "fal")

    async def main() -> None:
        with pytest.raises(ProviderError):
            await spy.poll("op")
        assert watcher.told == []  # retried by the workflow; pauses nothing
        with pytest.raises(ProviderError):
            await spy.start("p", None)

    asyncio.run(main())
    assert watcher.told == [(7.0, "fal")]


class StubQueues:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    async def delete(self, queue: str, handle: str) -> None:
        self.deleted.append(handle)


def _apply_all(tmp_path: Path, steps: list[tuple[float, RateLimited]]) -> list[Any]:
    """Apply each event after advancing the clock; the queue's pause after each."""
    clock = ManualClock(T0)
    with queue_factory(tmp_path) as queues:
        q = queues.open(Recorder(clock), clock=clock)

        async def main() -> list[Any]:
            co: Any = SimpleNamespace(
                queues=StubQueues(), read_job=None, clock=clock, counters={"events": 0}
            )
            consumer = EventsConsumer(co, q)
            seen = []
            for i, (advance_s, event) in enumerate(steps):
                clock.advance(advance_s)
                await consumer._apply_event(Received(encode(event), f"h{i}", 1, "w"))
                await asyncio.sleep(0)  # the tell leaves at the end of this loop turn
                st = await q.astatus()  # after the tell: the queue's mailbox is in order
                seen.append((st.paused_until, st.paused_reason, st.quota_pauses))
            consumer.close()
            assert co.queues.deleted == [f"h{i}" for i in range(len(steps))]
            return seen

        # on the queue's own loop, as in `serve` (the consumer shares the server's loop)
        system, _ = q.parts()
        assert system.loop is not None
        return asyncio.run_coroutine_threadsafe(main(), system.loop).result(30)


def test_a_pause_runs_from_when_the_worker_saw_the_429(tmp_path: Path) -> None:
    seen = _apply_all(
        tmp_path,
        [
            (0.0, RateLimited(worker_id="w1", retry_after_s=5.0, seen_at=T0 - 3)),  # 3 s late
            (0.0, RateLimited(worker_id="w2", retry_after_s=5.0)),  # an older worker's
            (0.0, RateLimited(worker_id="w3", retry_after_s=5.0, seen_at=T0 + 60)),  # skewed
        ],
    )
    assert seen[0] == (T0 + 2, "rate_limit", 0)
    assert seen[1] == (T0 + 5, "rate_limit", 0)  # from when it is applied
    assert seen[2] == (T0 + 5, "rate_limit", 0)  # a clock ahead never lengthens it


def test_a_notice_applied_twice_or_late_changes_nothing(tmp_path: Path) -> None:
    first = RateLimited(worker_id="w1", retry_after_s=5.0, seen_at=T0)
    seen = _apply_all(
        tmp_path,
        [
            (0.0, first),
            (6.0, first),  # SQS delivers it again, after its pause ended
            (3600.0, RateLimited(worker_id="w2", retry_after_s=5.0, seen_at=T0 + 1)),  # late
        ],
    )
    # no new pause (the status shows none once it is over), never a quota pause
    assert seen == [(T0 + 5, "rate_limit", 0), (None, None, 0), (None, None, 0)]


def test_notices_seconds_apart_never_make_a_quota_pause(tmp_path: Path) -> None:
    """Workers' start 429s keep coming while their jobs retry (also after a pause ends):
    each pauses for its own Retry-After; only a job's end may find a quota (as on one
    machine, where a 429 pauses dispatch only when the job's retries gave up)."""
    seen = _apply_all(
        tmp_path,
        [
            (0.0, RateLimited(worker_id="w1", retry_after_s=5.0, seen_at=T0)),
            (6.0, RateLimited(worker_id="w2", retry_after_s=5.0, seen_at=T0 + 6)),
        ],
    )
    assert seen == [(T0 + 5, "rate_limit", 0), (T0 + 11, "rate_limit", 0)]
